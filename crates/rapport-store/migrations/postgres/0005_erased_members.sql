-- Members whose personal data was erased: commands refuse them.
ALTER TABLE members ADD COLUMN erased BOOLEAN NOT NULL DEFAULT false;
