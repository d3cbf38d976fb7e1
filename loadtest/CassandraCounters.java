// Serves a Cassandra node's request counters as JSON over HTTP, so that
// `natter-load traffic --count NAME=URL#FIELD` can read them when its
// measured window starts and ends (loadtest/bench runs it beside the
// node; README.md, "What a message costs").
//
//   java loadtest/CassandraCounters.java PID PORT
//
// PID is the Cassandra JVM on this machine (same user); it is reached with
// the attach API, which starts the node's local JMX agent, so the node
// needs no JMX port. Every GET on 127.0.0.1:PORT answers one JSON object
// of counters since the node started:
//
//   statements  CQL statements executed: prepared and unprepared single
//               statements, plus batches (a batch counts once; a batch
//               with conditions counts only among the LWTs)
//   single      the single statements (CQL metrics PreparedStatements-
//               and RegularStatementsExecuted)
//   batches     logged, unlogged and counter batches (Batch metrics)
//   lwt         lightweight transactions: cas_writes + cas_reads
//   cas_writes  conditional writes (ClientRequest CASWrite)
//   cas_reads   SERIAL reads (ClientRequest CASRead)
//
// These count what clients asked of the node, not the node's own queries
// (schema, Paxos state), and not this program's reads, which are JMX.
// Runs with the Java that runs Cassandra (11 or 17, with jdk.attach,
// jdk.httpserver and, for the source launcher, jdk.compiler); exits when
// the node does.

import com.sun.net.httpserver.HttpServer;
import com.sun.tools.attach.VirtualMachine;
import java.io.IOException;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.util.LinkedHashMap;
import java.util.Map;
import javax.management.InstanceNotFoundException;
import javax.management.MBeanServerConnection;
import javax.management.ObjectName;
import javax.management.remote.JMXConnector;
import javax.management.remote.JMXConnectorFactory;
import javax.management.remote.JMXServiceURL;

public class CassandraCounters {
  private static final String METRICS = "org.apache.cassandra.metrics:";

  private final String pid;
  private JMXConnector connector;

  CassandraCounters(String pid) {
    this.pid = pid;
  }

  public static void main(String[] args) throws Exception {
    if (args.length != 2) {
      System.err.println("usage: java CassandraCounters.java PID PORT");
      System.exit(64);
    }
    CassandraCounters counters = new CassandraCounters(args[0]);
    counters.read(); // fail now rather than at the first request
    long pid = Long.parseLong(args[0]);
    HttpServer server =
        HttpServer.create(
            new InetSocketAddress(InetAddress.getLoopbackAddress(), Integer.parseInt(args[1])), 16);
    server.createContext(
        "/",
        exchange -> {
          byte[] body;
          int status = 200;
          try {
            body = counters.json().getBytes(StandardCharsets.UTF_8);
          } catch (Exception e) {
            status = 503;
            body = ("{\"error\": \"" + e.toString().replace("\"", "'") + "\"}").getBytes(StandardCharsets.UTF_8);
          }
          exchange.getResponseHeaders().set("Content-Type", "application/json");
          exchange.sendResponseHeaders(status, body.length);
          try (OutputStream out = exchange.getResponseBody()) {
            out.write(body);
          }
        });
    server.start();
    System.err.println("cassandra-counters: serving node " + pid + " on " + server.getAddress());
    // Serve while the node lives.
    ProcessHandle.of(pid).ifPresent(node -> node.onExit().join());
    server.stop(0);
  }

  synchronized String json() throws Exception {
    StringBuilder out = new StringBuilder("{");
    for (Map.Entry<String, Long> e : read().entrySet()) {
      if (out.length() > 1) out.append(", ");
      out.append('"').append(e.getKey()).append("\": ").append(e.getValue());
    }
    return out.append("}\n").toString();
  }

  /** The counters, reconnecting once if the node's agent went away. */
  synchronized Map<String, Long> read() throws Exception {
    try {
      return counters(connection());
    } catch (IOException e) {
      connector = null;
      return counters(connection());
    }
  }

  private MBeanServerConnection connection() throws Exception {
    if (connector == null) {
      VirtualMachine vm = VirtualMachine.attach(pid);
      String address;
      try {
        address = vm.startLocalManagementAgent();
      } finally {
        vm.detach();
      }
      connector = JMXConnectorFactory.connect(new JMXServiceURL(address));
    }
    return connector.getMBeanServerConnection();
  }

  private static Map<String, Long> counters(MBeanServerConnection jmx) throws Exception {
    long prepared = count(jmx, "type=CQL,name=PreparedStatementsExecuted");
    long regular = count(jmx, "type=CQL,name=RegularStatementsExecuted");
    long batches =
        count(jmx, "type=Batch,name=PartitionsPerLoggedBatch")
            + count(jmx, "type=Batch,name=PartitionsPerUnloggedBatch")
            + count(jmx, "type=Batch,name=PartitionsPerCounterBatch");
    long casWrites = count(jmx, "type=ClientRequest,scope=CASWrite,name=Latency");
    long casReads = count(jmx, "type=ClientRequest,scope=CASRead,name=Latency");
    Map<String, Long> out = new LinkedHashMap<>();
    out.put("statements", prepared + regular + batches);
    out.put("single", prepared + regular);
    out.put("batches", batches);
    out.put("lwt", casWrites + casReads);
    out.put("cas_writes", casWrites);
    out.put("cas_reads", casReads);
    return out;
  }

  /**
   * A metric's count; 0 for one the node has not registered yet, as it
   * registers batch and CAS metrics only when the first such request comes.
   */
  private static long count(MBeanServerConnection jmx, String name) throws Exception {
    try {
      return ((Number) jmx.getAttribute(new ObjectName(METRICS + name), "Count")).longValue();
    } catch (InstanceNotFoundException e) {
      return 0;
    }
  }
}
