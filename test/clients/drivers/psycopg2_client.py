# A psycopg2 application's habits against one database: a distributed table created and filled with executemany
# and COPY, values of many types read back, a named (server-side) cursor fetched in batches, a transaction
# rolled back. Prints what it saw, one line per fact, so that two servers' transcripts compare as text.
# Usage: psycopg2_client.py PORT DISTRIBUTE (DISTRIBUTE is 1 through the proxy, 0 on a plain server).
import io
import sys

import psycopg2

port, distribute = int(sys.argv[1]), sys.argv[2] == "1"
conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
cur = conn.cursor()
cur.execute("drop table if exists py_items")
cur.execute(
    "create table py_items (id int primary key, name text, amount numeric(12,2), ratio float8, created timestamptz,"
    " day date, tags text[], payload jsonb, flag bool, data bytea)"
)
conn.commit()
if distribute:
    # parapool's functions run outside a transaction block; psycopg2 opens one unless autocommit is on.
    conn.autocommit = True
    cur.execute("select parapool.distribute_table('py_items', 'id')")
    conn.autocommit = False

rows = [
    (i, f"item {i}", f"{i * 3}.{i % 100:02d}", i / 7, f"2026-01-{i % 28 + 1:02d} 10:{i % 60:02d}:00+00",
     f"2025-12-{i % 28 + 1:02d}", [f"t{i % 3}", "x"], f'{{"k": {i}, "s": "v{i}"}}', i % 2 == 0, bytes([i % 256, 0, 255]))
    for i in range(1, 301)
]
cur.executemany("insert into py_items values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", rows)
conn.commit()

copy = io.StringIO("".join(f"{i}\tcopied {i}\t{i}.50\t0.5\t2026-02-01 00:00:00+00\t2026-02-02\t{{a,b}}\t{{\"c\": {i}}}\tt\t\\\\x0102\n" for i in range(301, 501)))
cur.copy_expert("copy py_items from stdin", copy)
conn.commit()

cur.execute("select count(*), sum(amount), min(created), max(day), count(distinct tags[1]) from py_items")
print("summary", cur.fetchone())
cur.execute("select id, name, amount, ratio, created, day, tags, payload, flag, data from py_items where id in (1, 2, 299, 450) order by id")
for row in cur.fetchall():
    print("row", row[:9], bytes(row[9]).hex())

named = conn.cursor(name="big_scan")
named.itersize = 64
named.execute("select id, amount from py_items order by id")
total, batches = 0, 0
while True:
    batch = named.fetchmany(64)
    if not batch:
        break
    batches += 1
    total += sum(r[1] for r in batch)
print("named cursor", batches, total)
named.close()
conn.commit()

cur.execute("update py_items set amount = amount + 1 where id <= 10")
print("updated", cur.rowcount)
conn.rollback()
cur.execute("select sum(amount) from py_items where id <= 10")
print("after rollback", cur.fetchone())

out = io.StringIO()
cur.copy_expert("copy (select id, name, flag from py_items where id % 97 = 0 order by id) to stdout", out)
print("copy out", out.getvalue().replace("\n", "|"))
cur.execute("select %s::int + 1, %s::text, %s::numeric * 2", (41, "hé", "1.25"))
print("parameters", cur.fetchone())
conn.close()
