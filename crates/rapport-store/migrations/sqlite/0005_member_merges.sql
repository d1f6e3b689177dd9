-- The member a member was merged into (MergeMembers), until an unmerge.
-- Reads of a merged member answer with this one; commands refuse chains.
ALTER TABLE members ADD COLUMN merged_into TEXT;
CREATE INDEX members_merged_into ON members (merged_into) WHERE merged_into IS NOT NULL;
