-- Contacts (each user's address book) and the presence privacy setting.

CREATE TABLE contacts (
    user_id     text NOT NULL REFERENCES users (id),
    contact_id  text NOT NULL REFERENCES users (id),
    PRIMARY KEY (user_id, contact_id)
);

ALTER TABLE users ADD COLUMN hide_presence boolean NOT NULL DEFAULT false;
