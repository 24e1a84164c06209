-- The room directories application services keep for the networks they
-- bridge (spec: application service room directories), apart from this
-- server's main list: publicRooms shows them for `third_party_instance_id`
-- ("<appservice id>|<network id>") or `include_all_networks`.
CREATE TABLE appservice_room_lists (
    appservice_id TEXT NOT NULL,
    network_id    TEXT NOT NULL,
    room_id       TEXT NOT NULL,
    PRIMARY KEY (appservice_id, network_id, room_id)
);
