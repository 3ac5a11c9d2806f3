--
-- PostgreSQL database dump
--

\restrict fZ05vGaS5971ghKiADdbihltax1EdzhISmwzF8806nl4d1wbhqGxEx87Nw6u4us

-- Dumped from database version 15.18 (Debian 15.18-0+deb12u1)
-- Dumped by pg_dump version 15.18 (Debian 15.18-0+deb12u1)

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

--
-- Name: fixture_app; Type: DATABASE; Schema: -; Owner: fixture_owner
--

CREATE DATABASE fixture_app WITH TEMPLATE = template0 ENCODING = 'UTF8' LOCALE_PROVIDER = libc LOCALE = 'C.UTF-8';


ALTER DATABASE fixture_app OWNER TO fixture_owner;

\unrestrict fZ05vGaS5971ghKiADdbihltax1EdzhISmwzF8806nl4d1wbhqGxEx87Nw6u4us
\connect fixture_app
\restrict fZ05vGaS5971ghKiADdbihltax1EdzhISmwzF8806nl4d1wbhqGxEx87Nw6u4us

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

--
-- Name: shop; Type: SCHEMA; Schema: -; Owner: fixture_owner
--

CREATE SCHEMA shop;


ALTER SCHEMA shop OWNER TO fixture_owner;

--
-- Name: item_count(); Type: FUNCTION; Schema: shop; Owner: fixture_owner
--

CREATE FUNCTION shop.item_count() RETURNS bigint
    LANGUAGE plpgsql
    AS $$
DECLARE n bigint;
BEGIN
  SELECT count(*) INTO n FROM shop.items;  -- a semicolon; inside the body
  RETURN n;
END;
$$;


ALTER FUNCTION shop.item_count() OWNER TO fixture_owner;

SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: items; Type: TABLE; Schema: shop; Owner: fixture_owner
--

CREATE TABLE shop.items (
    id integer NOT NULL,
    name text NOT NULL,
    note text
);


ALTER TABLE shop.items OWNER TO fixture_owner;

--
-- Data for Name: items; Type: TABLE DATA; Schema: shop; Owner: fixture_owner
--

COPY shop.items (id, name, note) FROM stdin;
1	apple	semi;colon
2	tab\there	back\\slash
3	pear	\N
4	\\.	line\nbreak
\.


--
-- Name: items items_pkey; Type: CONSTRAINT; Schema: shop; Owner: fixture_owner
--

ALTER TABLE ONLY shop.items
    ADD CONSTRAINT items_pkey PRIMARY KEY (id);


--
-- Name: TABLE items; Type: ACL; Schema: shop; Owner: fixture_owner
--

GRANT SELECT ON TABLE shop.items TO fixture_reader;


--
-- Name: DEFAULT PRIVILEGES FOR TABLES; Type: DEFAULT ACL; Schema: shop; Owner: fixture_owner
--

ALTER DEFAULT PRIVILEGES FOR ROLE fixture_owner IN SCHEMA shop GRANT SELECT ON TABLES  TO fixture_reader;


--
-- PostgreSQL database dump complete
--

\unrestrict fZ05vGaS5971ghKiADdbihltax1EdzhISmwzF8806nl4d1wbhqGxEx87Nw6u4us

