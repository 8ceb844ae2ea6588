-- A small retail schema for the demo: products, stock moves, orders, payments.
CREATE TABLE products (
  id serial PRIMARY KEY,
  sku text UNIQUE NOT NULL,
  name text NOT NULL,
  price numeric(10,2) NOT NULL
);
CREATE TABLE stock_moves (
  id bigserial PRIMARY KEY,
  product_id int NOT NULL REFERENCES products,
  moved_at timestamptz NOT NULL,
  qty int NOT NULL,
  location text NOT NULL
);
CREATE TABLE orders (
  id bigserial PRIMARY KEY,
  store text NOT NULL,
  ordered_at timestamptz NOT NULL,
  total numeric(12,2) NOT NULL
);
CREATE TABLE order_lines (
  order_id bigint NOT NULL REFERENCES orders,
  product_id int NOT NULL REFERENCES products,
  qty int NOT NULL,
  PRIMARY KEY (order_id, product_id)
);
CREATE TABLE payments (
  id bigserial PRIMARY KEY,
  order_id bigint NOT NULL REFERENCES orders,
  method text NOT NULL CHECK (method IN ('card', 'cash', 'voucher')),
  amount numeric(12,2) NOT NULL
);
INSERT INTO products (sku, name, price)
SELECT 'SKU-' || lpad(g::text, 5, '0'), 'Product ' || g, round((g % 500) + 0.99, 2) FROM generate_series(1, 2000) g;
INSERT INTO stock_moves (product_id, moved_at, qty, location)
SELECT 1 + g % 2000, TIMESTAMPTZ '2026-01-01' + g * INTERVAL '1 minute', 1 + g % 20, 'store-' || g % 12 FROM generate_series(1, 50000) g;
INSERT INTO orders (store, ordered_at, total)
SELECT 'store-' || g % 12, TIMESTAMPTZ '2026-03-01' + g * INTERVAL '30 seconds', 0 FROM generate_series(1, 20000) g;
INSERT INTO order_lines (order_id, product_id, qty)
SELECT o, 1 + (o * 7 + k) % 2000, 1 + k FROM generate_series(1, 20000) o, generate_series(0, 2) k;
UPDATE orders o SET total = s.total FROM (
  SELECT ol.order_id, sum(ol.qty * p.price) AS total FROM order_lines ol JOIN products p ON p.id = ol.product_id GROUP BY ol.order_id
) s WHERE s.order_id = o.id;
INSERT INTO payments (order_id, method, amount)
SELECT id, (ARRAY['card', 'cash', 'voucher'])[1 + id % 3], total FROM orders;
