//! Interop with implementations we did not write: OpenSC's `pkcs11-tool` uses our keys and makes keys we
//! use; OpenSSL verifies our ECDSA and RSA signatures; PyPI `cryptography` (OpenSSL 3.0 has no ML-DSA)
//! verifies our ML-DSA signatures. Each tool is required: a missing one fails the test with the package
//! to install.

#![allow(clippy::panic, clippy::unwrap_used)] // test crate: failures should be loud

use std::path::Path;
use std::process::{Command, Output};

use qsi_hsm::{KeyAlgorithm, KeyStore, SignatureScheme, SoftHsmToken, verify_signature};

fn require(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success());
    if !matches!(found, Ok(true)) {
        panic!(
            "`{tool}` is required for this interop test: apt-get install {package} (.ci/run installs it)"
        );
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("could not run {cmd:?}: {e}"))
}

fn ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn p11tool(t: &SoftHsmToken) -> Command {
    let mut c = Command::new("pkcs11-tool");
    c.arg("--module").arg(&t.module).args([
        "--token-label",
        &t.label,
        "--login",
        "--pin",
        t.user_pin.expose(),
    ]);
    for (k, v) in t.child_env() {
        c.env(k, v);
    }
    c
}

fn pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        lines.join("\n")
    )
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// pkcs11-tool signs `message` with raw CKM_ECDSA (SoftHSM2 2.6 has no CKM_ECDSA_SHA*): we hash, it signs
/// the digest and returns the DER (`openssl`) signature format.
fn pkcs11_tool_ecdsa(
    t: &SoftHsmToken,
    id: &str,
    hash: &'static aws_lc_rs::digest::Algorithm,
    message: &[u8],
    dir: &Path,
) -> Vec<u8> {
    let digest = write(
        dir,
        "digest",
        aws_lc_rs::digest::digest(hash, message).as_ref(),
    );
    let sig = dir.join("p11sig");
    ok(p11tool(t)
        .args([
            "--sign",
            "--mechanism",
            "ECDSA",
            "--signature-format",
            "openssl",
            "--id",
            id,
            "--input-file",
        ])
        .arg(&digest)
        .arg("--output-file")
        .arg(&sig));
    std::fs::read(&sig).unwrap()
}

#[test]
fn openssl_verifies_our_ecdsa_and_rsa_signatures() {
    require("openssl", "openssl");
    let t = SoftHsmToken::create("ossl").unwrap();
    let store = t.open().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let msg = write(dir.path(), "msg", b"a to-be-signed structure, more or less");
    let cases = [
        (
            KeyAlgorithm::EcP256,
            SignatureScheme::EcdsaP256Sha256,
            "-sha256",
            &[][..],
        ),
        (
            KeyAlgorithm::EcP384,
            SignatureScheme::EcdsaP384Sha384,
            "-sha384",
            &[][..],
        ),
        (
            KeyAlgorithm::Rsa3072,
            SignatureScheme::RsaPkcs1Sha256,
            "-sha256",
            &[][..],
        ),
        (
            KeyAlgorithm::Rsa3072,
            SignatureScheme::RsaPssSha384,
            "-sha384",
            &[
                "-sigopt",
                "rsa_padding_mode:pss",
                "-sigopt",
                "rsa_pss_saltlen:digest",
            ][..],
        ),
    ];
    for (i, (alg, scheme, digest, extra)) in cases.iter().enumerate() {
        let key = match store.find(&format!("k-{alg}")) {
            Ok(k) => k,
            Err(_) => store.generate(&format!("k-{alg}"), *alg).unwrap(),
        };
        let spki = store.public_key_spki(&key).unwrap();
        let pub_pem = write(dir.path(), &format!("pub{i}.pem"), pem(&spki).as_bytes());
        let sig = store
            .sign_with(&key, *scheme, &std::fs::read(&msg).unwrap())
            .unwrap();
        let sig_path = write(dir.path(), &format!("sig{i}"), &sig);
        let out = ok(Command::new("openssl")
            .args(["dgst", digest, "-verify"])
            .arg(&pub_pem)
            .args(*extra)
            .arg("-signature")
            .arg(&sig_path)
            .arg(&msg));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Verified OK"),
            "{scheme:?}"
        );
        // And a wrong signature is rejected by the same command, so the check above can fail.
        let mut bad = sig.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let bad_path = write(dir.path(), &format!("bad{i}"), &bad);
        let out = run(Command::new("openssl")
            .args(["dgst", digest, "-verify"])
            .arg(&pub_pem)
            .args(*extra)
            .arg("-signature")
            .arg(&bad_path)
            .arg(&msg));
        assert!(
            !out.status.success(),
            "{scheme:?}: openssl accepted an altered signature"
        );
    }
}

#[test]
fn python_cryptography_verifies_our_ml_dsa_signatures() {
    require("python3", "python3");
    let probe = run(Command::new("python3").args([
        "-c",
        "from cryptography.hazmat.primitives.asymmetric import mldsa",
    ]));
    assert!(
        probe.status.success(),
        "PyPI cryptography >= 48 (ML-DSA) is required: pip install -r .ci/requirements.txt ({})",
        String::from_utf8_lossy(&probe.stderr)
    );
    let t = SoftHsmToken::create("pyca").unwrap();
    let store = t.open().unwrap();
    let dir = tempfile::tempdir().unwrap();
    for alg in [KeyAlgorithm::MlDsa65, KeyAlgorithm::MlDsa87] {
        let key = store.generate(&format!("pq-{alg}"), alg).unwrap();
        let spki = write(
            dir.path(),
            &format!("{alg}.spki"),
            &store.public_key_spki(&key).unwrap(),
        );
        let msg = write(dir.path(), "msg", b"certificate body");
        let sig = write(
            dir.path(),
            &format!("{alg}.sig"),
            &store.sign(&key, b"certificate body").unwrap(),
        );
        let script = "import sys\nfrom cryptography.hazmat.primitives.serialization import load_der_public_key\n\
                      k = load_der_public_key(open(sys.argv[1],'rb').read())\n\
                      print(type(k).__name__)\n\
                      k.verify(open(sys.argv[2],'rb').read(), open(sys.argv[3],'rb').read())\nprint('verified')\n";
        let out = ok(Command::new("python3")
            .args(["-c", script])
            .arg(&spki)
            .arg(&sig)
            .arg(&msg));
        let text = String::from_utf8_lossy(&out.stdout);
        let expected = if alg == KeyAlgorithm::MlDsa65 {
            "MLDSA65PublicKey"
        } else {
            "MLDSA87PublicKey"
        };
        assert!(
            text.contains(expected) && text.contains("verified"),
            "{text}"
        );
        let wrong = write(dir.path(), "wrong", b"another body");
        let out = run(Command::new("python3")
            .args(["-c", script])
            .arg(&spki)
            .arg(&sig)
            .arg(&wrong));
        assert!(
            !out.status.success(),
            "cryptography accepted an ML-DSA signature over another message"
        );
    }
}

#[test]
fn pkcs11_tool_finds_and_signs_with_our_key_and_sees_it_locked_in() {
    require("pkcs11-tool", "opensc");
    require("openssl", "openssl");
    let t = SoftHsmToken::create("p11t").unwrap();
    let store = t.open().unwrap();
    let key = store
        .generate("our-site-key", KeyAlgorithm::EcP256)
        .unwrap();
    let id = hex::encode(&key.id);
    let listed = ok(p11tool(&t).args(["--list-objects", "--type", "privkey"]));
    let listing = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listing.contains("our-site-key") && listing.contains(&id),
        "{listing}"
    );
    // Non-extractable and sensitive as the token itself reports it (pkcs11-tool's --read-object cannot
    // even try for private keys; the C_GetAttributeValue refusal is tested in pkcs11_softhsm.rs).
    assert!(
        listing.contains("always sensitive") && listing.contains("never extractable"),
        "{listing}"
    );
    assert!(
        listing.contains("Usage:      sign\n"),
        "a signing key is for signing only: {listing}"
    );

    let dir = tempfile::tempdir().unwrap();
    let message = b"signed by pkcs11-tool with a key qsi made";
    let sig = pkcs11_tool_ecdsa(&t, &id, &aws_lc_rs::digest::SHA256, message, dir.path());
    let spki = store.public_key_spki(&key).unwrap();
    verify_signature(&spki, SignatureScheme::EcdsaP256Sha256, message, &sig).unwrap();
}

#[test]
fn a_key_made_by_pkcs11_tool_works_with_us() {
    require("pkcs11-tool", "opensc");
    let t = SoftHsmToken::create("ext").unwrap();
    let store = t.open().unwrap();
    ok(p11tool(&t).args([
        "--keypairgen",
        "--key-type",
        "EC:secp384r1",
        "--label",
        "made-by-opensc",
        "--id",
        "c0ffee",
    ]));
    let key = store.find("made-by-opensc").unwrap();
    assert_eq!(key.algorithm, KeyAlgorithm::EcP384);
    assert_eq!(key.id, vec![0xc0, 0xff, 0xee]);
    assert_eq!(store.find("pkcs11:id=%C0%FF%EE;type=private").unwrap(), key);
    // The public key we export is the one pkcs11-tool's key pair signs for...
    let dir = tempfile::tempdir().unwrap();
    let spki = store.public_key_spki(&key).unwrap();
    let theirs = pkcs11_tool_ecdsa(
        &t,
        "c0ffee",
        &aws_lc_rs::digest::SHA384,
        b"they sign",
        dir.path(),
    );
    verify_signature(
        &spki,
        SignatureScheme::EcdsaP384Sha384,
        b"they sign",
        &theirs,
    )
    .unwrap();
    // ...and what we sign with their key, OpenSSL verifies with that public key.
    require("openssl", "openssl");
    let sig = store.sign(&key, b"we sign with their key").unwrap();
    let pub_pem = write(dir.path(), "pub.pem", pem(&spki).as_bytes());
    let msg = write(dir.path(), "msg", b"we sign with their key");
    let sig_path = write(dir.path(), "sig", &sig);
    ok(Command::new("openssl")
        .args(["dgst", "-sha384", "-verify"])
        .arg(&pub_pem)
        .arg("-signature")
        .arg(&sig_path)
        .arg(&msg));
}
