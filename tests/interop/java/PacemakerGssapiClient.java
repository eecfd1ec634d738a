// A Storm-like Pacemaker client that authenticates with the JDK's own SASL GSSAPI client
// (Kerberos, RFC 4752), with Storm's parameters, then reads one pulse. For pmcluster's interop
// tests.
//
//   java -Djava.security.auth.login.config=JAAS -Djava.security.krb5.conf=KRB5_CONF \
//        PacemakerGssapiClient HOST PORT SERVICE PATH SERVER_AUTH
//
// Storm's KERBEROS (KerberosSaslNettyClient): a Krb5LoginModule login from the JAAS section
// PacemakerClient, then Sasl.createSaslClient({"GSSAPI"}, <the login's principal>, SERVICE,
// HOST, {qop: auth, server_auth: SERVER_AUTH}, null) inside Subject.doAs. Storm passes
// server_auth "false"; "true" asks for mutual authentication. The first SASL token goes out at
// once in a SASL_MESSAGE_TOKEN; the server's CONTROL_MESSAGE(-203) ends the exchange.
// Frames are an int32 length + a bare Thrift TBinaryProtocol HBMessage, written by hand here.
// Prints one line per step: "LOGIN <principal>", then
// "AUTH OK qop=<qop>" | "AUTH CLOSED" | "AUTH FAILED <why>", then
// "PULSE <hex>" | "MISS <id>" | "NOT_AUTHORIZED <message_id>" | "CLOSED".

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.EOFException;
import java.io.IOException;
import java.net.Socket;
import java.net.SocketException;
import java.nio.charset.StandardCharsets;
import java.security.PrivilegedExceptionAction;
import java.util.HashMap;
import java.util.Map;
import javax.security.auth.Subject;
import javax.security.auth.kerberos.KerberosPrincipal;
import javax.security.auth.login.LoginContext;
import javax.security.sasl.Sasl;
import javax.security.sasl.SaslClient;
import javax.security.sasl.SaslException;

public class PacemakerGssapiClient {
    static final int GET_PULSE = 10, GET_PULSE_RESPONSE = 11, CONTROL_MESSAGE = 16,
            SASL_MESSAGE_TOKEN = 17, NOT_AUTHORIZED = 18;

    static final class Msg {
        int type = -1;
        int messageId = -1;
        byte[] blob;
        String pulseId;
        byte[] details;
    }

    public static void main(String[] args) throws Exception {
        String host = args[0];
        int port = Integer.parseInt(args[1]);
        String service = args[2], path = args[3], serverAuth = args[4];

        LoginContext login = new LoginContext("PacemakerClient");
        login.login();
        Subject subject = login.getSubject();
        String principal = subject.getPrincipals(KerberosPrincipal.class).iterator().next().getName();
        System.out.println("LOGIN " + principal);
        Subject.doAs(subject, (PrivilegedExceptionAction<Void>) () -> {
            run(host, port, service, path, principal, serverAuth);
            return null;
        });
    }

    static void run(String host, int port, String service, String path, String principal,
            String serverAuth) throws Exception {
        Map<String, String> props = new HashMap<>();
        props.put(Sasl.QOP, "auth");
        props.put(Sasl.SERVER_AUTH, serverAuth);
        SaslClient sasl = Sasl.createSaslClient(
                new String[] {"GSSAPI"}, principal, service, host, props, null);

        try (Socket socket = new Socket(host, port)) {
            socket.setSoTimeout(10_000);
            DataOutputStream out = new DataOutputStream(socket.getOutputStream());
            DataInputStream in = new DataInputStream(socket.getInputStream());

            byte[] first = sasl.hasInitialResponse() ? sasl.evaluateChallenge(new byte[0]) : new byte[0];
            send(out, message(SASL_MESSAGE_TOKEN, 7, wrapToken(first), null));
            while (true) {
                Msg m = read(in);
                if (m == null) {
                    System.out.println("AUTH CLOSED");
                    return;
                }
                if (m.type == SASL_MESSAGE_TOKEN) {
                    byte[] response;
                    try {
                        response = sasl.evaluateChallenge(unwrapToken(m.blob));
                    } catch (SaslException e) {
                        System.out.println("AUTH FAILED " + e.getMessage());
                        return;
                    }
                    if (response != null) {  // an empty response is a message too (RFC 4752)
                        send(out, message(SASL_MESSAGE_TOKEN, 7, wrapToken(response), null));
                    }
                } else if (m.type == CONTROL_MESSAGE && m.blob != null && m.blob.length == 2
                        && (short) (((m.blob[0] & 0xff) << 8) | (m.blob[1] & 0xff)) == -203) {
                    break;
                } else {
                    System.out.println("AUTH FAILED unexpected frame type " + m.type);
                    return;
                }
            }
            if (!sasl.isComplete()) {
                System.out.println("AUTH FAILED incomplete");
                return;
            }
            System.out.println("AUTH OK qop=" + sasl.getNegotiatedProperty(Sasl.QOP));

            send(out, message(GET_PULSE, 1, path.getBytes(StandardCharsets.UTF_8), 1));
            Msg reply = read(in);
            if (reply == null) {
                System.out.println("CLOSED");
            } else if (reply.type == NOT_AUTHORIZED) {
                System.out.println("NOT_AUTHORIZED " + reply.messageId);
            } else if (reply.type == GET_PULSE_RESPONSE && reply.details != null) {
                StringBuilder h = new StringBuilder();
                for (byte b : reply.details) h.append(String.format("%02x", b));
                System.out.println("PULSE " + h);
            } else if (reply.type == GET_PULSE_RESPONSE) {
                System.out.println("MISS " + reply.pulseId);
            } else {
                System.out.println("UNEXPECTED " + reply.type);
            }
        } finally {
            sasl.dispose();
        }
    }

    /** Storm's SASL token blob: int16 -500, int32 length, the token. */
    static byte[] wrapToken(byte[] token) throws IOException {
        ByteArrayOutputStream buf = new ByteArrayOutputStream();
        DataOutputStream d = new DataOutputStream(buf);
        d.writeShort(-500);
        d.writeInt(token.length);
        d.write(token);
        return buf.toByteArray();
    }

    static byte[] unwrapToken(byte[] blob) throws IOException {
        DataInputStream d = new DataInputStream(new ByteArrayInputStream(blob));
        if (d.readShort() != -500) throw new IOException("not a SASL token blob");
        byte[] token = new byte[d.readInt()];
        d.readFully(token);
        return token;
    }

    /** HBMessage{type, data = union with one string/binary member, message_id?}. */
    static byte[] message(int type, int member, byte[] value, Integer messageId) throws IOException {
        ByteArrayOutputStream buf = new ByteArrayOutputStream();
        DataOutputStream d = new DataOutputStream(buf);
        d.writeByte(8); d.writeShort(1); d.writeInt(type);
        d.writeByte(12); d.writeShort(2);
        d.writeByte(11); d.writeShort(member); d.writeInt(value.length); d.write(value);
        d.writeByte(0);
        if (messageId != null) {
            d.writeByte(8); d.writeShort(3); d.writeInt(messageId);
        }
        d.writeByte(0);
        return buf.toByteArray();
    }

    static void send(DataOutputStream out, byte[] body) throws IOException {
        out.writeInt(body.length);
        out.write(body);
        out.flush();
    }

    /** The next frame, or null once the server has closed the connection. */
    static Msg read(DataInputStream in) throws IOException {
        int size;
        try {
            size = in.readInt();
        } catch (EOFException | SocketException e) {
            return null;
        }
        byte[] body = new byte[size];
        try {
            in.readFully(body);
        } catch (EOFException | SocketException e) {
            return null;
        }
        DataInputStream d = new DataInputStream(new ByteArrayInputStream(body));
        Msg m = new Msg();
        while (true) {
            byte t = d.readByte();
            if (t == 0) break;
            short id = d.readShort();
            if (id == 1 && t == 8) m.type = d.readInt();
            else if (id == 3 && t == 8) m.messageId = d.readInt();
            else if (id == 2 && t == 12) readData(d, m);
            else skip(d, t);
        }
        return m;
    }

    static void readData(DataInputStream d, Msg m) throws IOException {
        while (true) {
            byte t = d.readByte();
            if (t == 0) return;
            short id = d.readShort();
            if (id == 7 && t == 11) m.blob = readBinary(d);
            else if (id == 2 && t == 12) {
                while (true) {
                    byte pt = d.readByte();
                    if (pt == 0) break;
                    short pid = d.readShort();
                    if (pid == 1 && pt == 11) m.pulseId = new String(readBinary(d), StandardCharsets.UTF_8);
                    else if (pid == 2 && pt == 11) m.details = readBinary(d);
                    else skip(d, pt);
                }
            } else skip(d, t);
        }
    }

    static byte[] readBinary(DataInputStream d) throws IOException {
        byte[] b = new byte[d.readInt()];
        d.readFully(b);
        return b;
    }

    static void skip(DataInputStream d, byte t) throws IOException {
        switch (t) {
            case 2: case 3: d.skipBytes(1); break;
            case 6: d.skipBytes(2); break;
            case 8: d.skipBytes(4); break;
            case 4: case 10: d.skipBytes(8); break;
            case 11: d.skipBytes(d.readInt()); break;
            case 12:
                while (true) {
                    byte ft = d.readByte();
                    if (ft == 0) break;
                    d.readShort();
                    skip(d, ft);
                }
                break;
            case 13: {
                byte kt = d.readByte(), vt = d.readByte();
                int n = d.readInt();
                for (int i = 0; i < n; i++) { skip(d, kt); skip(d, vt); }
                break;
            }
            case 14: case 15: {
                byte et = d.readByte();
                int n = d.readInt();
                for (int i = 0; i < n; i++) skip(d, et);
                break;
            }
            default: throw new IOException("unknown Thrift type " + t);
        }
    }
}
