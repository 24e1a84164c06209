-- What a registration's UIA session remembers of the request that started
-- it (core/src/registration.rs): the parameters, the password only as its
-- hash, and once done the user it registered. JSON; NULL for other sessions.
ALTER TABLE uia_sessions ADD COLUMN params TEXT;
