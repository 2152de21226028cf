-- Groups and membership (core.ports.GroupStore). Membership points are ids of the group
-- timeline's events (byte order = timeline order, hence COLLATE "C").

CREATE TABLE groups (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    created_by  text NOT NULL REFERENCES users (id),
    created_at  timestamptz NOT NULL
);

-- Current members.
CREATE TABLE group_members (
    group_id   text NOT NULL REFERENCES groups (id),
    user_id    text NOT NULL REFERENCES users (id),
    role       text NOT NULL CHECK (role IN ('admin', 'member')),
    joined_id  text COLLATE "C" NOT NULL,
    PRIMARY KEY (group_id, user_id)
);

CREATE INDEX group_members_user_idx ON group_members (user_id);

-- Every stretch of the timeline a user belonged to a group: what history they may read.
CREATE TABLE group_membership_periods (
    group_id   text NOT NULL REFERENCES groups (id),
    user_id    text NOT NULL REFERENCES users (id),
    joined_id  text COLLATE "C" NOT NULL,
    left_id    text COLLATE "C",
    PRIMARY KEY (group_id, user_id, joined_id)
);
