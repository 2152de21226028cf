-- Group timeline events (ChatMessage.event, .target) are kept in history too.
ALTER TABLE messages ADD COLUMN event text NOT NULL DEFAULT '';
ALTER TABLE messages ADD COLUMN target text NOT NULL DEFAULT '';
