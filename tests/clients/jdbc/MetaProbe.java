// pgjdbc DatabaseMetaData against LogSphere (tests/it/jdbc.rs). Prints one line per call,
// `NAME ok|FAIL detail`; the test asserts the lines.
import java.sql.*;
import java.util.*;

public class MetaProbe {
    interface Call { String run(DatabaseMetaData md) throws SQLException; }

    static List<String> col(ResultSet rs, String name) throws SQLException {
        List<String> out = new ArrayList<>();
        try (rs) { while (rs.next()) out.add(rs.getString(name)); }
        return out;
    }

    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://127.0.0.1:" + args[0] + "/logsphere?user=logsphere";
        Map<String, Call> calls = new LinkedHashMap<>();
        calls.put("getSchemas", md -> String.join(",", new TreeSet<>(col(md.getSchemas(), "TABLE_SCHEM"))));
        calls.put("getTables", md -> String.join(",", new TreeSet<>(
            col(md.getTables(null, "public", "%", new String[] {"TABLE", "VIEW"}), "TABLE_NAME"))));
        calls.put("getColumns", md -> String.join(",", col(md.getColumns(null, "public", "logs", "%"), "COLUMN_NAME")));
        calls.put("getPrimaryKeys", md -> "rows=" + col(md.getPrimaryKeys(null, "public", "logs"), "COLUMN_NAME").size());
        calls.put("getTypeInfo", md -> {
            // NAME:DATA_TYPE:PRECISION:LITERAL_PREFIX:AUTO_INCREMENT:UNSIGNED_ATTRIBUTE for a few
            // types, then how many rows and whether table row types (pg_class) were left out.
            Map<String, String> rows = new TreeMap<>();
            int count = 0;
            boolean sorted = true;
            int last = Integer.MIN_VALUE;
            try (ResultSet rs = md.getTypeInfo()) {
                while (rs.next()) {
                    count++;
                    int type = rs.getInt("DATA_TYPE");
                    sorted &= type >= last;
                    last = type;
                    rows.putIfAbsent(rs.getString("TYPE_NAME"), rs.getString("TYPE_NAME") + ":" + type
                        + ":" + rs.getInt("PRECISION") + ":" + rs.getString("LITERAL_PREFIX")
                        + ":" + rs.getBoolean("AUTO_INCREMENT") + ":" + rs.getBoolean("UNSIGNED_ATTRIBUTE"));
                }
            }
            List<String> picked = new ArrayList<>();
            for (String name : new String[] {"bool", "int2", "int4", "int8", "bigserial", "numeric",
                    "float8", "text", "varchar", "timestamptz", "_text", "json"}) {
                picked.add(rows.getOrDefault(name, name + ":missing"));
            }
            return String.join(" ", picked) + " rows=" + count + " sorted=" + sorted
                + " has_pg_class=" + rows.containsKey("pg_class");
        });
        try (Connection c = DriverManager.getConnection(url)) {
            DatabaseMetaData md = c.getMetaData();
            for (Map.Entry<String, Call> e : calls.entrySet()) {
                try {
                    System.out.println(e.getKey() + " ok " + e.getValue().run(md));
                } catch (SQLException ex) {
                    System.out.println(e.getKey() + " FAIL " + ex.getMessage().replace('\n', ' '));
                }
            }
        }
    }
}
