// A Storm-like Pacemaker client that authenticates with the JDK's own SASL DIGEST-MD5 client,
// with Storm's parameters, then reads one pulse. For pmcluster's interop tests.
//
//   java PacemakerDigestClient.java HOST PORT CLIENT_NAME JAAS_USER JAAS_PASSWORD PATH
//
// Storm's DIGEST (SaslNettyClient, AuthUtils.makeDigestPayload): the secret is the lowercase hex
// SHA-512 of "user:password" from the JAAS section PacemakerDigest; the SASL password is base64
// of that hex string; the SASL user name is base64 of the client's name (topology name);
// mechanism DIGEST-MD5, protocol null, server name "default", qop auth.
// Frames are an int32 length + a bare Thrift TBinaryProtocol HBMessage, written by hand here.
// Prints one line per step: "AUTH OK" | "AUTH CLOSED" | "AUTH FAILED <why>", then
// "PULSE <hex>" | "MISS <id>" | "NOT_AUTHORIZED <message_id>" | "CLOSED".

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.EOFException;
import java.io.IOException;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.util.Base64;
import java.util.HashMap;
import java.util.Map;
import javax.security.auth.callback.Callback;
import javax.security.auth.callback.CallbackHandler;
import javax.security.auth.callback.NameCallback;
import javax.security.auth.callback.PasswordCallback;
import javax.security.auth.callback.UnsupportedCallbackException;
import javax.security.sasl.RealmCallback;
import javax.security.sasl.RealmChoiceCallback;
import javax.security.sasl.Sasl;
import javax.security.sasl.SaslClient;
import javax.security.sasl.SaslException;

public class PacemakerDigestClient {
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
        String name = args[2], user = args[3], password = args[4], path = args[5];

        byte[] sha = MessageDigest.getInstance("SHA-512")
                .digest((user + ":" + password).getBytes(StandardCharsets.UTF_8));
        StringBuilder hex = new StringBuilder();
        for (byte b : sha) hex.append(String.format("%02x", b));
        Base64.Encoder b64 = Base64.getEncoder();
        char[] saslPassword = b64.encodeToString(hex.toString().getBytes(StandardCharsets.UTF_8))
                .toCharArray();
        String saslUser = b64.encodeToString(name.getBytes(StandardCharsets.UTF_8));

        CallbackHandler handler = callbacks -> {
            for (Callback c : callbacks) {
                if (c instanceof NameCallback) {
                    ((NameCallback) c).setName(saslUser);
                } else if (c instanceof PasswordCallback) {
                    ((PasswordCallback) c).setPassword(saslPassword);
                } else if (c instanceof RealmCallback) {
                    RealmCallback rc = (RealmCallback) c;
                    rc.setText(rc.getDefaultText());
                } else if (c instanceof RealmChoiceCallback) {
                    ((RealmChoiceCallback) c).setSelectedIndex(0);
                } else {
                    throw new UnsupportedCallbackException(c);
                }
            }
        };
        Map<String, String> props = new HashMap<>();
        props.put(Sasl.QOP, "auth");
        SaslClient sasl = Sasl.createSaslClient(
                new String[] {"DIGEST-MD5"}, null, null, "default", props, handler);

        try (Socket socket = new Socket(host, port)) {
            socket.setSoTimeout(10_000);
            DataOutputStream out = new DataOutputStream(socket.getOutputStream());
            DataInputStream in = new DataInputStream(socket.getInputStream());

            send(out, message(CONTROL_MESSAGE, 7, control(-202), null));
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
                    if (response != null && response.length > 0) {
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
            System.out.println(sasl.isComplete() ? "AUTH OK" : "AUTH FAILED incomplete");

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
        }
    }

    static byte[] control(int code) {
        return new byte[] {(byte) (code >> 8), (byte) code};
    }

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

    static Msg read(DataInputStream in) throws IOException {
        int size;
        try {
            size = in.readInt();
        } catch (EOFException | java.net.SocketException e) {
            return null;
        }
        byte[] body = new byte[size];
        try {
            in.readFully(body);
        } catch (EOFException e) {
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
