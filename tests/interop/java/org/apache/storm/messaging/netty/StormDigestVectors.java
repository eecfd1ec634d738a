// Storm's own DIGEST secret derivation, for tests/interop/test_storm_digest_vectors.py.
// In Storm's package because SaslUtils (what SaslNettyClient uses) is package-private.
// Usage: java -cp CP org.apache.storm.messaging.netty.StormDigestVectors JAAS_FILE TOPOLOGY
// Prints: the hex payload (ClientAuthUtils.makeDigestPayload of section PacemakerDigest), the
// SASL password (SaslUtils.encodePassword of it) and the SASL user name (encodeIdentifier).
package org.apache.storm.messaging.netty;

import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.Map;
import org.apache.storm.security.auth.ClientAuthUtils;

public final class StormDigestVectors {
    public static void main(String[] args) {
        Map<String, Object> conf = new HashMap<>();
        conf.put("java.security.auth.login.config", args[0]);
        String payload = ClientAuthUtils.makeDigestPayload(conf, "PacemakerDigest");
        System.out.println(payload);
        System.out.println(new String(SaslUtils.encodePassword(payload.getBytes(StandardCharsets.UTF_8))));
        System.out.println(SaslUtils.encodeIdentifier(args[1].getBytes(StandardCharsets.UTF_8)));
    }
}
