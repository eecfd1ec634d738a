import java.io.BufferedReader;
import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.lang.reflect.Field;
import java.lang.reflect.Method;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.storm.Config;
import org.apache.storm.DaemonConfig;
import org.apache.storm.LocalCluster;
import org.apache.storm.generated.Assignment;
import org.apache.storm.generated.NodeInfo;
import org.apache.storm.generated.TopologySummary;
import org.apache.storm.spout.SpoutOutputCollector;
import org.apache.storm.task.OutputCollector;
import org.apache.storm.task.TopologyContext;
import org.apache.storm.topology.OutputFieldsDeclarer;
import org.apache.storm.topology.TopologyBuilder;
import org.apache.storm.topology.base.BaseRichBolt;
import org.apache.storm.topology.base.BaseRichSpout;
import org.apache.storm.tuple.Fields;
import org.apache.storm.tuple.Tuple;
import org.apache.storm.tuple.Values;
import org.apache.storm.utils.Time;

/**
 * A real topology on Storm's LocalCluster whose worker heartbeats go through Pacemaker, for
 * tests/interop/test_storm_topology.py.
 *
 * <p>Usage: {@code java TopologyDriver PACEMAKER_PORT HOST[,HOST...] ZK_PORT ZK_ROOT TASK_TIMEOUT_SECS}.
 * Nimbus, one supervisor with two slots, and a spout and a bolt on two workers run in this JVM;
 * {@code storm.cluster.state.store} is Storm 2.x's PaceMakerStateStorageFactory, so every
 * executor heartbeat is written by the workers to {@code pacemaker.servers} and read back by
 * Nimbus. Prints one JSON line when the topology is running and every executor is in Nimbus's
 * heartbeat cache, then answers one JSON line per stdin command:
 *
 * <ul>
 *   <li>{@code report} - what a sampler (every 250 ms since start) saw: the assignment now and
 *       whether it ever changed (an executor's node, port or start time: a reassignment),
 *       Nimbus's own heartbeat cache (the oldest age of an executor's last heartbeat change,
 *       any executor timed out), spout opens and bolt prepares (executors (re)started), tuples
 *       acked
 *   <li>{@code quit}
 * </ul>
 */
public final class TopologyDriver {
    static final AtomicLong SPOUT_OPENS = new AtomicLong();
    static final AtomicLong BOLT_PREPARES = new AtomicLong();
    static final AtomicLong EMITTED = new AtomicLong();
    static final AtomicLong ACKED = new AtomicLong();
    static final AtomicLong EXECUTED = new AtomicLong();

    /** Emits numbered tuples with message ids (so acking is on), about 100 per second. */
    public static final class CountingSpout extends BaseRichSpout {
        private transient SpoutOutputCollector collector;
        private long next;

        @Override
        public void open(Map<String, Object> conf, TopologyContext context, SpoutOutputCollector collector) {
            this.collector = collector;
            SPOUT_OPENS.incrementAndGet();
        }

        @Override
        public void nextTuple() {
            try {
                Thread.sleep(10);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                return;
            }
            long n = next++;
            collector.emit(new Values(n), n);
            EMITTED.incrementAndGet();
        }

        @Override
        public void ack(Object msgId) {
            ACKED.incrementAndGet();
        }

        @Override
        public void declareOutputFields(OutputFieldsDeclarer declarer) {
            declarer.declare(new Fields("n"));
        }
    }

    /** Acks every tuple. */
    public static final class CountingBolt extends BaseRichBolt {
        private transient OutputCollector collector;

        @Override
        public void prepare(Map<String, Object> conf, TopologyContext context, OutputCollector collector) {
            this.collector = collector;
            BOLT_PREPARES.incrementAndGet();
        }

        @Override
        public void execute(Tuple input) {
            EXECUTED.incrementAndGet();
            collector.ack(input);
        }

        @Override
        public void declareOutputFields(OutputFieldsDeclarer declarer) {
        }
    }

    private static final Object LOCK = new Object();
    private static Map<String, String> baseline;
    private static Map<String, String> current;
    private static final List<String> changes = new ArrayList<>();
    private static int maxAgeSecs;
    private static int ageNow;
    private static boolean everTimedOut;
    private static int cached;
    private static String sampleError;

    public static void main(String[] args) throws Exception {
        PrintStream out = new PrintStream(new FileOutputStream(FileDescriptor.out), true, "UTF-8");
        System.setOut(System.err); // Storm's logging never mixes with the JSON lines
        int taskTimeout = Integer.parseInt(args[4]);
        Map<String, Object> conf = new HashMap<>();
        conf.put(Config.STORM_CLUSTER_STATE_STORE, "org.apache.storm.cluster.PaceMakerStateStorageFactory");
        conf.put(Config.PACEMAKER_PORT, Integer.valueOf(args[0]));
        conf.put(Config.PACEMAKER_SERVERS, Arrays.asList(args[1].split(",")));
        conf.put(Config.STORM_ZOOKEEPER_SERVERS, List.of("127.0.0.1"));
        conf.put(Config.STORM_ZOOKEEPER_PORT, Integer.valueOf(args[2]));
        conf.put(Config.STORM_ZOOKEEPER_ROOT, args[3]);
        conf.put(Config.STORM_LOCAL_HOSTNAME, "127.0.0.1");
        // Storm's timings scaled down: executor heartbeats every second, Nimbus checks every
        // second, and an executor whose heartbeat has not changed for taskTimeout seconds is
        // reassigned. The launch grace is no longer than that, so a timeout is acted on.
        conf.put(Config.TASK_HEARTBEAT_FREQUENCY_SECS, 1);
        conf.put(DaemonConfig.NIMBUS_MONITOR_FREQ_SECS, 1);
        conf.put(DaemonConfig.NIMBUS_TASK_TIMEOUT_SECS, taskTimeout);
        conf.put(DaemonConfig.NIMBUS_TASK_LAUNCH_SECS, taskTimeout);
        conf.put(Config.SUPERVISOR_WORKER_HEARTBEATS_MAX_TIMEOUT_SECS, 5);
        try (LocalCluster cluster = new LocalCluster.Builder()
                .withDaemonConf(conf)
                .withSupervisors(1)
                .withPortsPerSupervisor(2)
                .build()) {
            TopologyBuilder builder = new TopologyBuilder();
            builder.setSpout("spout", new CountingSpout(), 1);
            builder.setBolt("bolt", new CountingBolt(), 1).shuffleGrouping("spout");
            Config topoConf = new Config();
            topoConf.setNumWorkers(2);
            cluster.submitTopology("pmcluster-interop", topoConf, builder.createTopology());
            String topoId = null;
            for (TopologySummary s : cluster.getClusterInfo().get_topologies()) {
                topoId = s.get_id();
            }
            long startNs = System.nanoTime();
            waitRunning(cluster, topoId);
            long readyMs = (System.nanoTime() - startNs) / 1_000_000;
            synchronized (LOCK) {
                baseline = current;
            }
            String id = topoId;
            Thread sampler = new Thread(() -> {
                while (true) {
                    try {
                        sample(cluster, id);
                        Thread.sleep(250);
                    } catch (InterruptedException e) {
                        return;
                    } catch (Exception e) {
                        synchronized (LOCK) {
                            sampleError = e.toString();
                        }
                    }
                }
            }, "sampler");
            sampler.setDaemon(true);
            sampler.start();
            out.println("{\"ready\":true,\"topology\":" + str(topoId) + ",\"ready_ms\":" + readyMs
                        + ",\"assignment\":" + json(baseline) + "}");

            BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
            String line;
            while ((line = in.readLine()) != null) {
                line = line.trim();
                if (line.equals("quit")) {
                    break;
                }
                if (line.equals("report")) {
                    out.println(report());
                } else {
                    out.println("{\"error\":" + str("unknown command: " + line) + "}");
                }
            }
            sampler.interrupt();
            cluster.killTopology("pmcluster-interop");
        }
        System.exit(0); // LocalCluster leaves non-daemon threads behind
    }

    /** Until the assignment has two workers and Nimbus has every executor's heartbeat (60 s). */
    private static void waitRunning(LocalCluster cluster, String topoId) throws Exception {
        long deadline = System.nanoTime() + 60_000_000_000L;
        while (true) {
            sample(cluster, topoId);
            synchronized (LOCK) {
                if (current != null && current.size() >= 3 && cached == current.size()
                        && current.values().stream().map(v -> v.split("@")[0]).distinct().count() == 2
                        && ACKED.get() > 0) {
                    return;
                }
            }
            if (System.nanoTime() > deadline) {
                throw new IllegalStateException("topology not running within 60 s: " + report());
            }
            Thread.sleep(250);
        }
    }

    /** One look at the assignment (ZooKeeper) and at Nimbus's heartbeat cache (memory). */
    private static void sample(LocalCluster cluster, String topoId) throws Exception {
        Assignment a = cluster.getClusterState().assignmentInfo(topoId, null);
        Map<String, String> now = new TreeMap<>();
        if (a != null) {
            for (Map.Entry<List<Long>, NodeInfo> e : a.get_executor_node_port().entrySet()) {
                NodeInfo ni = e.getValue();
                Long start = a.get_executor_start_time_secs().get(e.getKey());
                now.put(e.getKey().toString(),
                        ni.get_node() + ":" + ni.get_port().iterator().next() + "@" + start);
            }
        }
        int oldest = 0;
        boolean timedOut = false;
        int n = 0;
        Object hc = cluster.getNimbus().getHeartbeatsCache();
        Field f = hc.getClass().getDeclaredField("cache");
        f.setAccessible(true);
        Map<?, ?> topos = (Map<?, ?>) f.get(hc);
        Map<?, ?> execs = (Map<?, ?>) topos.get(topoId);
        int nowSecs = Time.currentTimeSecs();
        if (execs != null) {
            for (Object ec : execs.values()) {
                Method nimbusTime = ec.getClass().getDeclaredMethod("getNimbusTimeSecs");
                Method isTimedOut = ec.getClass().getDeclaredMethod("isTimedOut");
                nimbusTime.setAccessible(true);
                isTimedOut.setAccessible(true);
                oldest = Math.max(oldest, nowSecs - (Integer) nimbusTime.invoke(ec));
                timedOut |= (Boolean) isTimedOut.invoke(ec);
                n++;
            }
        }
        synchronized (LOCK) {
            if (baseline != null && !now.equals(current)) {
                changes.add(System.currentTimeMillis() / 1000 + " " + now);
            }
            current = now;
            cached = n;
            ageNow = oldest;
            if (baseline != null) {
                maxAgeSecs = Math.max(maxAgeSecs, oldest);
                everTimedOut |= timedOut;
            }
        }
    }

    private static String report() {
        synchronized (LOCK) {
            return "{\"assignment\":" + json(current) + ",\"baseline\":" + json(baseline)
                + ",\"changes\":" + list(changes) + ",\"nimbus_max_age_secs\":" + maxAgeSecs
                + ",\"nimbus_age_secs\":" + ageNow + ",\"nimbus_cached\":" + cached
                + ",\"timed_out\":" + everTimedOut + ",\"spout_opens\":" + SPOUT_OPENS.get()
                + ",\"bolt_prepares\":" + BOLT_PREPARES.get() + ",\"emitted\":" + EMITTED.get()
                + ",\"executed\":" + EXECUTED.get() + ",\"acked\":" + ACKED.get()
                + ",\"error\":" + str(sampleError) + "}";
        }
    }

    private static String json(Map<String, String> m) {
        if (m == null) {
            return "null";
        }
        StringBuilder b = new StringBuilder("{");
        for (Map.Entry<String, String> e : m.entrySet()) {
            if (b.length() > 1) {
                b.append(',');
            }
            b.append(str(e.getKey())).append(':').append(str(e.getValue()));
        }
        return b.append('}').toString();
    }

    private static String list(List<String> items) {
        StringBuilder b = new StringBuilder("[");
        for (String s : items) {
            if (b.length() > 1) {
                b.append(',');
            }
            b.append(str(s));
        }
        return b.append(']').toString();
    }

    private static String str(String s) {
        if (s == null) {
            return "null";
        }
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') {
                b.append('\\').append(c);
            } else if (c < 0x20) {
                b.append(String.format("\\u%04x", (int) c));
            } else {
                b.append(c);
            }
        }
        return b.append('"').toString();
    }
}
