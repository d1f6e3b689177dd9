-- Pairs of members a community manager said are not one person: never
-- suggested for a merge again. member_a < member_b.
CREATE TABLE rejected_merge_suggestions (
    community TEXT NOT NULL,
    member_a  TEXT NOT NULL,
    member_b  TEXT NOT NULL,
    PRIMARY KEY (community, member_a, member_b)
);
