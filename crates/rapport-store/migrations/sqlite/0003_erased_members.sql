-- Members whose personal data was erased: commands refuse them.
ALTER TABLE members ADD COLUMN erased INTEGER NOT NULL DEFAULT 0;
