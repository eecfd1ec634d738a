import java.io.BufferedReader;
import java.io.FileOutputStream;
import java.io.FileDescriptor;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CyclicBarrier;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import org.apache.storm.cluster.PaceMakerStateStorage;
import org.apache.storm.generated.ClusterWorkerHeartbeat;
import org.apache.storm.generated.ExecutorInfo;
import org.apache.storm.generated.ExecutorSpecificStats;
import org.apache.storm.generated.ExecutorStats;
import org.apache.storm.generated.HBMessage;
import org.apache.storm.generated.HBMessageData;
import org.apache.storm.generated.HBPulse;
import org.apache.storm.generated.HBServerMessageType;
import org.apache.storm.generated.SpoutStats;
import org.apache.storm.pacemaker.PacemakerClient;
import org.apache.storm.pacemaker.PacemakerClientPool;
import org.apache.storm.utils.Utils;

/**
 * Drives Storm's own Pacemaker client classes for tests/interop/test_storm_client.py.
 *
 * <p>Usage: {@code java StormDriver PORT HOST[,HOST...] AUTH_METHOD [JAAS_FILE]}. Commands arrive one per line on stdin and each
 * gets exactly one JSON line on stdout (Storm's own logging goes to stderr):
 *
 * <ul>
 *   <li>{@code hb_set PATH STORM_ID TIME_SECS} - PaceMakerStateStorage.set_worker_hb with
 *       Utils.serialize(ClusterWorkerHeartbeat)
 *   <li>{@code hb_get PATH} - get_worker_hb, payload deserialized by Storm
 *   <li>{@code hb_children PATH} - get_worker_hb_children
 *   <li>{@code hb_delete PATH} - delete_worker_hb
 *   <li>{@code raw HOST TYPE PATH [DETAILS]} - one HBMessage through PacemakerClient(conf, HOST)
 *   <li>{@code burst HOST THREADS ROUNDS} - THREADS threads share one PacemakerClient (so up to
 *       THREADS requests in flight on its one connection), each SEND_PULSE then GET_PULSE of its
 *       own paths ROUNDS times; counts replies by what they were
 *   <li>{@code serialize STORM_ID TIME_SECS UPTIME_SECS} - hex of Utils.serialize(heartbeat)
 *   <li>{@code inflight HOST N PREFIX} - N threads (N at most 100, the client's reply slots) on one
 *       PacemakerClient, started together: N SEND_PULSE PREFIX/pI=vI, then N GET_PULSE of them
 *   <li>{@code quit}
 * </ul>
 */
public final class StormDriver {
    private static PrintStream out;
    private static Map<String, Object> conf;
    private static PaceMakerStateStorage storage;
    private static final Map<String, PacemakerClient> CLIENTS = new HashMap<>();

    public static void main(String[] args) throws Exception {
        // JSON lines only on the real stdout; anything Storm logs goes to stderr.
        out = new PrintStream(new FileOutputStream(FileDescriptor.out), true, "UTF-8");
        System.setOut(System.err);
        conf = Utils.readStormConfig();
        conf.put("pacemaker.port", Integer.valueOf(args[0]));
        conf.put("pacemaker.servers", Arrays.asList(args[1].split(",")));
        conf.put("pacemaker.auth.method", args[2]);
        if (args.length > 3) { // Storm reads the JAAS file from its config, not the JVM property
            conf.put("java.security.auth.login.config", args[3]);
        }
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        while ((line = in.readLine()) != null) {
            String[] w = line.trim().split(" ", 5);
            if (w[0].equals("quit")) {
                break;
            }
            long start = System.nanoTime();
            StringBuilder json = new StringBuilder("{\"op\":").append(str(w[0]));
            try {
                run(w, json);
                json.append(",\"ok\":true");
            } catch (Throwable e) {
                json.append(",\"ok\":false,\"error\":").append(str(e.toString()));
            }
            json.append(",\"ms\":").append((System.nanoTime() - start) / 1_000_000).append('}');
            out.println(json);
        }
        out.flush();
        // No graceful netty shutdown (2 s quiet period per client); Storm's threads are not daemons.
        Runtime.getRuntime().halt(0);
    }

    private static PaceMakerStateStorage storage() throws Exception {
        if (storage == null) {
            storage = new PaceMakerStateStorage(new PacemakerClientPool(conf), null);
        }
        return storage;
    }

    private static void run(String[] w, StringBuilder json) throws Exception {
        switch (w[0]) {
            case "hb_set":
                storage().set_worker_hb(w[1], Utils.serialize(heartbeat(w[2], Integer.parseInt(w[3]), 7)), null);
                break;
            case "hb_get": {
                byte[] got = storage().get_worker_hb(w[1], false);
                json.append(",\"found\":").append(got != null);
                if (got != null) {
                    ClusterWorkerHeartbeat hb = Utils.deserialize(got, ClusterWorkerHeartbeat.class);
                    json.append(",\"storm_id\":").append(str(hb.get_storm_id()));
                    json.append(",\"time_secs\":").append(hb.get_time_secs());
                    json.append(",\"executors\":").append(hb.get_executor_stats_size());
                }
                break;
            }
            case "hb_children":
                json.append(",\"names\":").append(strs(storage().get_worker_hb_children(w[1], false)));
                break;
            case "hb_delete":
                storage().delete_worker_hb(w[1]);
                break;
            case "raw":
                raw(w, json);
                break;
            case "inflight":
                inflight(w[1], Integer.parseInt(w[2]), w[3], json);
                break;
            case "burst":
                burst(w[1], Integer.parseInt(w[2]), Integer.parseInt(w[3]), json);
                break;
            case "serialize":
                json.append(",\"hex\":").append(str(hex(Utils.serialize(
                    heartbeat(w[1], Integer.parseInt(w[2]), Integer.parseInt(w[3]))))));
                break;
            default:
                throw new IllegalArgumentException("unknown command " + w[0]);
        }
    }

    private static void raw(String[] w, StringBuilder json) throws Exception {
        PacemakerClient client = CLIENTS.computeIfAbsent(w[1], host -> new PacemakerClient(conf, host));
        HBServerMessageType type = HBServerMessageType.valueOf(w[2]);
        HBMessageData data;
        if (type == HBServerMessageType.SEND_PULSE) {
            HBPulse pulse = new HBPulse();
            pulse.set_id(w[3]);
            pulse.set_details(w[4].getBytes(StandardCharsets.UTF_8));
            data = HBMessageData.pulse(pulse);
        } else {
            data = HBMessageData.path(w[3]);
        }
        HBMessage request = new HBMessage(type, data);
        HBMessage reply = client.send(request); // matched by Storm on the echoed message id
        json.append(",\"type\":").append(str(reply.get_type().name()));
        json.append(",\"sent_id\":").append(request.get_message_id());
        json.append(",\"reply_id\":").append(reply.get_message_id());
        HBMessageData d = reply.get_data();
        if (d == null) {
            json.append(",\"data\":null");
        } else if (d.is_set_boolval()) {
            json.append(",\"boolval\":").append(d.get_boolval());
        } else if (d.is_set_pulse()) {
            HBPulse p = d.get_pulse();
            json.append(",\"pulse_id\":").append(str(p.get_id()));
            json.append(",\"details\":").append(p.is_set_details()
                ? str(new String(p.get_details(), StandardCharsets.UTF_8)) : "null");
        } else if (d.is_set_nodes()) {
            json.append(",\"nodes\":").append(strs(d.get_nodes().get_pulseIds()));
        } else if (d.is_set_records()) {
            List<String> ids = new ArrayList<>();
            for (HBPulse p : d.get_records().get_pulses()) {
                ids.add(p.get_id() + "=" + new String(p.get_details(), StandardCharsets.UTF_8));
            }
            json.append(",\"records\":").append(strs(ids));
        } else {
            json.append(",\"data\":\"other\"");
        }
    }

    /**
     * N requests in flight at once on one connection, twice: a write round, then a read round
     * whose every reply must carry its own request's id and pulse. One request per thread per
     * round and N at most the client's 100 slots, so Storm's slot-reuse race cannot occur.
     */
    private static void inflight(String host, int n, String prefix, StringBuilder json) throws Exception {
        PacemakerClient client = CLIENTS.computeIfAbsent(host, h -> new PacemakerClient(conf, h));
        AtomicInteger writes = new AtomicInteger();
        AtomicInteger reads = new AtomicInteger();
        List<String> errors = java.util.Collections.synchronizedList(new ArrayList<>());
        Set<Integer> ids = ConcurrentHashMap.newKeySet();
        CyclicBarrier barrier = new CyclicBarrier(n);
        List<Thread> threads = new ArrayList<>();
        for (int i = 0; i < n; i++) {
            final int k = i;
            Thread t = new Thread(() -> {
                try {
                    String path = prefix + "/p" + k;
                    HBPulse pulse = new HBPulse();
                    pulse.set_id(path);
                    pulse.set_details(("v" + k).getBytes(StandardCharsets.UTF_8));
                    barrier.await(30, TimeUnit.SECONDS);
                    HBMessage w1 = new HBMessage(HBServerMessageType.SEND_PULSE, HBMessageData.pulse(pulse));
                    HBMessage r1 = client.send(w1);
                    ids.add(w1.get_message_id());
                    if (r1.get_type() == HBServerMessageType.SEND_PULSE_RESPONSE
                            && r1.get_message_id() == w1.get_message_id()) {
                        writes.incrementAndGet();
                    } else {
                        errors.add("write " + k + ": " + r1);
                    }
                    barrier.await(60, TimeUnit.SECONDS); // every write answered before any read
                    HBMessage w2 = new HBMessage(HBServerMessageType.GET_PULSE, HBMessageData.path(path));
                    HBMessage r2 = client.send(w2);
                    HBMessageData d = r2.get_data();
                    if (r2.get_type() == HBServerMessageType.GET_PULSE_RESPONSE
                            && r2.get_message_id() == w2.get_message_id()
                            && d != null && d.is_set_pulse() && path.equals(d.get_pulse().get_id())
                            && ("v" + k).equals(new String(d.get_pulse().get_details(), StandardCharsets.UTF_8))) {
                        reads.incrementAndGet();
                    } else {
                        errors.add("read " + k + ": " + r2);
                    }
                } catch (Exception e) {
                    errors.add(k + ": " + e);
                }
            });
            threads.add(t);
            t.start();
        }
        for (Thread t : threads) {
            t.join(120_000);
        }
        json.append(",\"writes\":").append(writes.get());
        json.append(",\"reads\":").append(reads.get());
        json.append(",\"distinct_ids\":").append(ids.size());
        json.append(",\"errors\":").append(strs(errors.subList(0, Math.min(errors.size(), 3))));
    }

    private static void burst(String host, int threads, int rounds, StringBuilder json) throws Exception {
        PacemakerClient client = CLIENTS.computeIfAbsent(host, h -> new PacemakerClient(conf, h));
        java.util.concurrent.atomic.AtomicInteger ok = new java.util.concurrent.atomic.AtomicInteger();
        java.util.concurrent.atomic.AtomicInteger wrong = new java.util.concurrent.atomic.AtomicInteger();
        java.util.concurrent.atomic.AtomicInteger race = new java.util.concurrent.atomic.AtomicInteger();
        java.util.concurrent.atomic.AtomicInteger failed = new java.util.concurrent.atomic.AtomicInteger();
        java.util.concurrent.CountDownLatch start = new java.util.concurrent.CountDownLatch(1);
        List<Thread> workers = new ArrayList<>();
        for (int t = 0; t < threads; t++) {
            final int id = t;
            Thread worker = new Thread(() -> {
                try {
                    start.await();
                    for (int r = 0; r < rounds; r++) {
                        String path = "/burst/t" + id + "/r" + r;
                        HBPulse pulse = new HBPulse();
                        pulse.set_id(path);
                        pulse.set_details(path.getBytes(StandardCharsets.UTF_8));
                        HBMessage sent = client.send(new HBMessage(HBServerMessageType.SEND_PULSE, HBMessageData.pulse(pulse)));
                        HBMessage got = client.send(new HBMessage(HBServerMessageType.GET_PULSE, HBMessageData.path(path)));
                        if (sent.get_type() != HBServerMessageType.SEND_PULSE_RESPONSE
                            || got.get_type() != HBServerMessageType.GET_PULSE_RESPONSE) {
                            // Storm's slot reuse handed this thread another thread's request
                            boolean isRequest = sent.get_type().getValue() % 2 == 0 && sent.get_type().getValue() < 16
                                || got.get_type().getValue() % 2 == 0 && got.get_type().getValue() < 16;
                            (isRequest ? race : wrong).incrementAndGet();
                        } else if (path.equals(new String(got.get_data().get_pulse().get_details(), StandardCharsets.UTF_8))) {
                            ok.incrementAndGet();
                        } else {
                            wrong.incrementAndGet();
                        }
                    }
                } catch (Exception e) {
                    failed.incrementAndGet();
                }
            });
            worker.start();
            workers.add(worker);
        }
        start.countDown();
        for (Thread worker : workers) {
            worker.join(120_000);
        }
        json.append(",\"ok_rounds\":").append(ok.get()).append(",\"wrong\":").append(wrong.get());
        json.append(",\"storm_race\":").append(race.get()).append(",\"failed\":").append(failed.get());
    }

    /** A worker heartbeat as Storm's worker builds it: one spout executor, one bolt executor. */
    private static ClusterWorkerHeartbeat heartbeat(String stormId, int timeSecs, int uptimeSecs) {
        Map<String, Map<String, Long>> emitted = new HashMap<>();
        emitted.put(":all-time", new HashMap<>(Map.of("default", 42L)));
        SpoutStats spout = new SpoutStats(new HashMap<>(), new HashMap<>(), new HashMap<>());
        Map<ExecutorInfo, ExecutorStats> stats = new HashMap<>();
        stats.put(new ExecutorInfo(1, 1), new ExecutorStats(emitted, emitted, ExecutorSpecificStats.spout(spout), 1.0));
        stats.put(new ExecutorInfo(2, 3), new ExecutorStats(emitted, emitted, ExecutorSpecificStats.spout(spout), 1.0));
        return new ClusterWorkerHeartbeat(stormId, stats, timeSecs, uptimeSecs);
    }

    private static String hex(byte[] bytes) {
        StringBuilder sb = new StringBuilder();
        for (byte b : bytes) {
            sb.append(String.format("%02x", b & 0xff));
        }
        return sb.toString();
    }

    private static String strs(List<String> values) {
        StringBuilder sb = new StringBuilder("[");
        for (String v : values) {
            sb.append(sb.length() > 1 ? "," : "").append(str(v));
        }
        return sb.append(']').toString();
    }

    private static String str(String s) {
        StringBuilder sb = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') {
                sb.append('\\').append(c);
            } else if (c < 0x20 || c > 0x7e) {
                sb.append(String.format("\\u%04x", (int) c));
            } else {
                sb.append(c);
            }
        }
        return sb.append('"').toString();
    }
}
