-- A running job is held by one node (`owner`) until `lease_until`; the node renews the lease
-- with every save, and another node takes the job over once the lease has run out.
ALTER TABLE jobs ADD COLUMN owner TEXT;
ALTER TABLE jobs ADD COLUMN lease_until INTEGER;
