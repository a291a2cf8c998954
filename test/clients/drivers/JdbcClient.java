// A JDBC application's habits against one database: PreparedStatement executions into a distributed table inside
// a transaction, batches into a replicated one and into the distributed one (autocommit and in a transaction,
// one failing on a duplicate key), a read with setFetchSize (a portal fetched in chunks, inside a
// transaction), many types read back, a rolled back update. Prints what it saw, one line per fact, so that two servers' transcripts compare as text.
// Usage: java JdbcClient PORT DISTRIBUTE (DISTRIBUTE is 1 through the proxy, 0 on a plain server).
import java.math.BigDecimal;
import java.sql.*;

public class JdbcClient {
  public static void main(String[] args) throws Exception {
    int port = Integer.parseInt(args[0]);
    boolean distribute = args[1].equals("1");
    String url = "jdbc:postgresql://127.0.0.1:" + port + "/postgres";
    // The schema and the rule through the simple query protocol, as parapool's functions require.
    try (Connection admin = DriverManager.getConnection(url + "?preferQueryMode=simple", "postgres", ""); Statement st = admin.createStatement()) {
      st.execute("drop table if exists jdbc_items");
      st.execute("create table jdbc_items (id bigint primary key, name text, amount numeric(12,2), created timestamp, flag boolean, score double precision)");
      if (distribute) st.execute("select parapool.distribute_table('jdbc_items', 'id')");
      st.execute("drop table if exists jdbc_log");
      st.execute("create table jdbc_log (id serial primary key, item bigint, note text)");
    }
    try (Connection conn = DriverManager.getConnection(url, "postgres", "")) {
      try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery("select 'extended protocol from here on'")) {
        rs.next();
        System.out.println(rs.getString(1));
      }
      conn.setAutoCommit(false);
      // Rows of the distributed table one execution each (each goes to its key's node), in one transaction.
      try (PreparedStatement ps = conn.prepareStatement("insert into jdbc_items values (?, ?, ?, ?, ?, ?)")) {
        int inserted = 0;
        for (int i = 1; i <= 1000; i++) {
          ps.setLong(1, i);
          ps.setString(2, "item " + i);
          ps.setBigDecimal(3, new BigDecimal(i + ".25"));
          ps.setTimestamp(4, Timestamp.valueOf("2026-03-" + String.format("%02d", i % 28 + 1) + " 08:00:00"));
          ps.setBoolean(5, i % 3 == 0);
          ps.setDouble(6, i / 8.0);
          inserted += ps.executeUpdate();
        }
        System.out.println("inserted " + inserted);
      }
      // Batches into a replicated table: every node runs the whole batch.
      try (PreparedStatement ps = conn.prepareStatement("insert into jdbc_log (item, note) values (?, ?)")) {
        for (int i = 1; i <= 500; i++) {
          ps.setLong(1, i);
          ps.setString(2, "note " + i);
          ps.addBatch();
          if (i % 250 == 0) {
            int[] counts = ps.executeBatch();
            System.out.println("batch " + counts.length + " " + counts[0]);
          }
        }
      }
      conn.commit();
      try (PreparedStatement ps = conn.prepareStatement("select id, name, amount, created, flag, score from jdbc_items where id > ? order by id")) {
        ps.setFetchSize(100);
        ps.setLong(1, 10);
        long rows = 0;
        BigDecimal sum = BigDecimal.ZERO;
        String first = null, last = null;
        try (ResultSet rs = ps.executeQuery()) {
          while (rs.next()) {
            rows++;
            sum = sum.add(rs.getBigDecimal(3));
            String line = rs.getLong(1) + " " + rs.getString(2) + " " + rs.getBigDecimal(3) + " " + rs.getTimestamp(4) + " " + rs.getBoolean(5) + " " + rs.getDouble(6);
            if (first == null) first = line;
            last = line;
          }
        }
        System.out.println("fetched " + rows + " " + sum + " first=" + first + " last=" + last);
      }
      conn.commit();
      try (PreparedStatement ps = conn.prepareStatement("update jdbc_items set amount = amount * 2 where id <= ?")) {
        ps.setLong(1, 5);
        System.out.println("updated " + ps.executeUpdate());
      }
      conn.rollback();
      try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery("select count(*), sum(amount), sum(case when flag then 1 else 0 end) from jdbc_items")) {
        rs.next();
        System.out.println("totals " + rs.getLong(1) + " " + rs.getBigDecimal(2) + " " + rs.getLong(3));
      }
      try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery("select count(*), sum(id), sum(item) from jdbc_log")) {
        rs.next();
        System.out.println("log " + rs.getLong(1) + " " + rs.getLong(2) + " " + rs.getLong(3));
      }
      conn.commit();
      // Batches into the distributed table, autocommit on: one Sync holds rows of every node.
      conn.setAutoCommit(true);
      try (PreparedStatement ps = conn.prepareStatement("insert into jdbc_items (id, name, amount) values (?, ?, ?)")) {
        for (int i = 2001; i <= 2300; i++) {
          ps.setLong(1, i);
          ps.setString(2, "batched " + i);
          ps.setBigDecimal(3, new BigDecimal(i + ".50"));
          ps.addBatch();
        }
        int[] counts = ps.executeBatch();
        System.out.println("distributed batch " + counts.length + " " + java.util.Arrays.stream(counts).sum());
        // A duplicate key in the batch: it fails, and none of its rows stays.
        for (int i : new int[] {2401, 2402, 2001, 2403}) {
          ps.setLong(1, i);
          ps.setString(2, "duplicate " + i);
          ps.setBigDecimal(3, BigDecimal.ONE);
          ps.addBatch();
        }
        try {
          ps.executeBatch();
          System.out.println("duplicate batch accepted");
        } catch (BatchUpdateException e) {
          System.out.println("duplicate batch refused " + e.getSQLState());
        }
      }
      // And in a transaction: updates of rows on every node, committed together.
      conn.setAutoCommit(false);
      try (PreparedStatement ps = conn.prepareStatement("update jdbc_items set amount = amount + 1 where id = ?")) {
        for (int i = 2001; i <= 2300; i += 7) {
          ps.setLong(1, i);
          ps.addBatch();
        }
        System.out.println("update batch " + java.util.Arrays.stream(ps.executeBatch()).sum());
      }
      conn.commit();
      try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery("select count(*), sum(amount) from jdbc_items where id > 2000")) {
        rs.next();
        System.out.println("batched " + rs.getLong(1) + " " + rs.getBigDecimal(2));
      }
      conn.commit();
    }
  }
}
