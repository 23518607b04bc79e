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
            List<String> names = col(md.getTypeInfo(), "TYPE_NAME");
            return "has_int8=" + names.contains("int8") + " has_text=" + names.contains("text");
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
