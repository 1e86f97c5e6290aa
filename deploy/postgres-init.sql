-- Run once by the postgres image on an empty data directory
-- (mounted into /docker-entrypoint-initdb.d by docker-compose.yml).
-- One database per service: each service owns its store.
CREATE DATABASE referrals;
CREATE DATABASE aids;
CREATE DATABASE outcomes;
