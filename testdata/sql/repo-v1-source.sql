-- The source of testdata/repo-v1: frozen, since the fixture must restore to exactly this.
-- Data that breaks naive backup tools: every byte value, large objects,
-- unicode names and data, several schemas, a partitioned table, an empty
-- table, NaN and infinities, and (in the test) a table of a million rows.
CREATE SCHEMA inventory;
CREATE SCHEMA "Ünïcødé Schéma";

CREATE TABLE public.every_byte (id int PRIMARY KEY, payload bytea NOT NULL);
INSERT INTO public.every_byte
SELECT 1, decode(string_agg(lpad(to_hex(b), 2, '0'), '' ORDER BY b), 'hex') FROM generate_series(0, 255) AS b;
INSERT INTO public.every_byte VALUES (2, '\x00'::bytea), (3, ''::bytea);

CREATE TABLE "Ünïcødé Schéma"."商品" ("名前" text PRIMARY KEY, "価格" numeric(12,2), "😀" text);
INSERT INTO "Ünïcødé Schéma"."商品" VALUES
  ('りんご', 120.50, 'emoji 🍎 ok'), ('Grüße', 3.00, E'tab\there\nnewline'), ('quote''s "double"', NULL, '\backslash');

CREATE TABLE inventory.floats (id int PRIMARY KEY, f8 float8, f4 float4, n numeric);
INSERT INTO inventory.floats VALUES
  (1, 'NaN', 'NaN', 'NaN'), (2, 'Infinity', 'Infinity', 'Infinity'), (3, '-Infinity', '-Infinity', '-Infinity'),
  (4, -0.0, 1.17549435e-38, 0.000000000000000000000000000001), (5, 1.7976931348623157e308, 3.4028235e38, 123456789012345678901234567890.123456789);

CREATE TABLE inventory.stock_moves (id bigint, moved_at date NOT NULL, sku text, qty int) PARTITION BY RANGE (moved_at);
CREATE TABLE inventory.stock_moves_2025 PARTITION OF inventory.stock_moves FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE inventory.stock_moves_2026 PARTITION OF inventory.stock_moves FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO inventory.stock_moves SELECT g, DATE '2025-06-01' + (g % 400), 'SKU-' || g % 97, g % 13 - 6 FROM generate_series(1, 5000) g;

CREATE TABLE inventory.empty_table (id int PRIMARY KEY, note text);

CREATE TABLE public.documents (id int PRIMARY KEY, blob oid);
INSERT INTO public.documents VALUES (1, lo_from_bytea(0, decode(repeat('00ff7f80', 5000), 'hex'))), (2, lo_from_bytea(0, ''::bytea));

CREATE VIEW inventory.stock_totals AS SELECT sku, sum(qty) AS qty FROM inventory.stock_moves GROUP BY sku;
CREATE FUNCTION inventory.add_qty(a int, b int) RETURNS int LANGUAGE sql AS 'SELECT a + b';
CREATE SEQUENCE inventory.order_no START 1000;
SELECT setval('inventory.order_no', 4242);
