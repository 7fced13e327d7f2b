-- Issue 13: the client addresses a pool's keys work from, as canonical CIDRs separated by commas
-- (`10.0.0.0/8,127.0.0.1/32`; checked by codexmesh_model::network::CidrList before it is
-- written). Empty: any address. Keep the two backends' files in step.
ALTER TABLE pools ADD COLUMN allowed_cidrs TEXT NOT NULL DEFAULT '';
