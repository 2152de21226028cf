-- Message history, kept forever (core.ports.HistoryStore), for the embedded default; production
-- keeps it in Cassandra (storage/cassandra_history.py) under the same contract.
-- Ids are fixed-width hex whose byte order is time order: COLLATE "C" compares bytes.

CREATE TABLE messages (
    conv          text NOT NULL,
    id            text COLLATE "C" NOT NULL,
    sender        text NOT NULL,
    sender_device text NOT NULL,
    recipient     text NOT NULL,
    body          text NOT NULL,
    ts            bigint NOT NULL,  -- ms since the epoch, as carried by the id
    client_id     text NOT NULL,
    PRIMARY KEY (conv, id)
);

-- Each user's conversations with their newest archived message.
CREATE TABLE conversations_by_user (
    user_id  text NOT NULL,
    conv     text NOT NULL,
    last_id  text COLLATE "C" NOT NULL,
    last_ts  bigint NOT NULL,
    PRIMARY KEY (user_id, conv)
);

CREATE INDEX conversations_by_user_recent_idx ON conversations_by_user (user_id, last_id DESC);
