#!/usr/bin/env bash
# The CA operator's walkthrough (docs/ca-operator.md) as one script:
#   examples/ca-walkthrough.sh OUTDIR
# creates a SoftHSM2 token store in OUTDIR, a root and an issuing CA with keys in the token, a test
# bridge and our cross-certificate to it, one certificate of every profile (OUTDIR/<profile>.der),
# an ML-DSA-65 chain, and CRLs. Uses `qsi` from $QSI, else target/debug/qsi, else PATH.
set -euo pipefail

out=${1:?usage: $0 OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
here=$(cd "$(dirname "$0")/.." && pwd)
qsi=${QSI:-}
if [ -z "$qsi" ]; then
  if [ -x "$here/target/debug/qsi" ]; then qsi="$here/target/debug/qsi"; else qsi=qsi; fi
fi
port=${QSI_CA_PORT:-8480}
# The PKCS#11 layer logs every mechanism SoftHSM2 lacks at ERROR; keep the walkthrough readable.
export RUST_LOG=${RUST_LOG:-warn,cryptoki=off}
base="http://127.0.0.1:$port"
for tool in softhsm2-util openssl; do
  command -v "$tool" >/dev/null || { echo "$tool is required: apt-get install ${tool/softhsm2-util/softhsm2}" >&2; exit 1; }
done

# 1. A token store of our own (in production: the HSM's PKCS#11 module and its tokens).
mkdir -p "$out/tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$out/tokens" > "$out/softhsm2.conf"
export SOFTHSM2_CONF="$out/softhsm2.conf"
pin() { od -An -N8 -tx1 /dev/urandom | tr -d ' \n'; }
# PINs go to files only the operator can read; ca.toml points at them (`file:PATH`), never holds them.
mkdir -p "$out/pins" && chmod 700 "$out/pins"
for t in qsi-ca qsi-card bridge; do
  (umask 077; pin > "$out/pins/$t.pin")
  softhsm2-util --init-token --free --label "$t" --so-pin "$(pin)" --pin "$(cat "$out/pins/$t.pin")" >/dev/null
done
export QSI_CARD_PIN=$(cat "$out/pins/qsi-card.pin")
capin="file:$out/pins/qsi-ca.pin"

# 2. Root CA (P-384, key on the token), then an issuing CA signed by it.
"$qsi" ca init --dir "$out/root" --name qsi-root --subject "CN=QSI Root CA,OU=PKI,O=QSI,C=US" \
  --key-alg p384 --token qsi-ca --pin "$capin" --base-url "$base" --listen "127.0.0.1:$port"
"$qsi" ca init --dir "$out/issuing" --name qsi-issuing --parent "$out/root" \
  --subject "CN=QSI Issuing CA,OU=PKI,O=QSI,C=US" --key-alg p384 --token qsi-ca --pin "$capin" --base-url "$base" \
  --listen "127.0.0.1:$port"
cp "$out/root/ca.der" "$out/root.der"
cp "$out/issuing/ca.der" "$out/issuing-ca.der"

# 3. A test bridge (its own self-signed CA) and our cross-certificate to it.
"$qsi" ca init --dir "$out/bridge" --name test-bridge --subject "CN=Test Bridge CA,OU=Bridge,O=Bridge Org,C=US" \
  --key-alg p384 --token bridge --pin "file:$out/pins/bridge.pin" --base-url "$base"
cat > "$out/cross.toml" <<'TOML'
# Our PIV Authentication and PIV-I hardware policies are recognised as the bridge's.
policies = ["2.16.840.1.101.3.2.1.3.13", "2.16.840.1.101.3.2.1.3.18"]
mappings = [
  ["2.16.840.1.101.3.2.1.3.13", "1.3.6.1.4.1.99999.1.13"],
  ["2.16.840.1.101.3.2.1.3.18", "1.3.6.1.4.1.99999.1.18"],
]
permitted_dn = ["O=Bridge Org,C=US"]
excluded_dn = ["O=QSI,C=US"]
require_explicit_policy = 0
inhibit_policy_mapping = 1
inhibit_any_policy = 0
subject_name = "test-bridge"
TOML
"$qsi" ca cross-certify --dir "$out/root" --subject-cert "$out/bridge/ca.der" --config "$out/cross.toml" \
  --out "$out/cross-certificate.der"

# 4. One certificate per profile from PKCS#10 requests (P-256 keys made by OpenSSL, standing in
#    for the subscribers), and the PIV Authentication key generated on the card token.
fascn=S9999F9999F999999F0F1F0000000000300001E
uuid=5b2a6f1e-3c4d-4e5f-8a9b-0c1d2e3f4a5b
mkdir -p "$out/keys"
csr() { # name subject
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$out/keys/$1.key" 2>/dev/null
  openssl req -new -key "$out/keys/$1.key" -subj "$2" -out "$out/keys/$1.csr"
}
person="/C=US/O=QSI/OU=People/CN=Alice Example"
for p in piv-card-auth piv-i-auth piv-i-card-auth; do
  csr "$p" "$person"
  "$qsi" ca issue --dir "$out/issuing" --profile "$p" --csr "$out/keys/$p.csr" --fascn "$fascn" --uuid "$uuid" --out "$out/$p.der"
done
# The PIV Authentication key generated on the card token (slot 9A, CKA_ID 01); the certificate and the
# CHUID signed by the issuing CA's content signer are written onto the card.
"$qsi" ca content-signer --dir "$out/issuing"
"$qsi" ca issue --dir "$out/issuing" --profile piv-auth --generate-key p256 --key-token qsi-card \
  --subject "CN=Alice Example,OU=People,O=QSI,C=US" --fascn "$fascn" --uuid "$uuid" --upn alice@qsi.test --out "$out/piv-auth.der"
for p in piv-digital-signature piv-key-management piv-i-digital-signature piv-i-key-management; do
  csr "$p" "$person"
  "$qsi" ca issue --dir "$out/issuing" --profile "$p" --csr "$out/keys/$p.csr" --email alice@qsi.test --out "$out/$p.der"
done
for p in piv-content-signing piv-i-content-signing ocsp-signer tls-client; do
  csr "$p" "/C=US/O=QSI/OU=Devices/CN=$p"
  "$qsi" ca issue --dir "$out/issuing" --profile "$p" --csr "$out/keys/$p.csr" --out "$out/$p.der"
done
csr tls-server "/C=US/O=QSI/OU=Devices/CN=site-a.qsi.test"
"$qsi" ca issue --dir "$out/issuing" --profile tls-server --csr "$out/keys/tls-server.csr" --dns site-a.qsi.test --ip 127.0.0.1 --out "$out/tls-server.der"

# 5. CRLs.
"$qsi" ca crl --dir "$out/root" --out "$out/root.crl"
"$qsi" ca crl --dir "$out/issuing" --out "$out/issuing-ca.crl"

# 6. The same with ML-DSA-65 (RFC 9881): root, issuing CA, a PIV Authentication certificate.
"$qsi" ca init --dir "$out/mldsa-root" --name qsi-mldsa-root --subject "CN=QSI ML-DSA Root CA,OU=PKI,O=QSI,C=US" \
  --key-alg ml-dsa-65 --token qsi-ca --pin "$capin" --base-url "$base"
"$qsi" ca init --dir "$out/mldsa-issuing" --name qsi-mldsa-issuing --parent "$out/mldsa-root" \
  --subject "CN=QSI ML-DSA Issuing CA,OU=PKI,O=QSI,C=US" --key-alg ml-dsa-65 --token qsi-ca --pin "$capin" --base-url "$base"
"$qsi" ca issue --dir "$out/mldsa-issuing" --profile piv-auth --generate-key ml-dsa-65 --key-token qsi-card \
  --subject "CN=Alice Example,OU=People,O=QSI,C=US" --fascn "$fascn" --uuid "$uuid" --out "$out/ml-dsa-65-piv-auth.der"
cp "$out/mldsa-root/ca.der" "$out/ml-dsa-65-root.der"
cp "$out/mldsa-issuing/ca.der" "$out/ml-dsa-65-issuing-ca.der"

"$qsi" ca list --dir "$out/issuing"
echo "walkthrough done: certificates, CRLs and tokens in $out"
