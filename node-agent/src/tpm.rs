//! The device's identity key in its TPM 2.0, where it has one.
//!
//! The key is a primary ECC P-256 signing key under the owner hierarchy,
//! made from a fixed template with a fogswarm-specific `unique` field:
//! the TPM derives it from its owner seed, so the same TPM always makes
//! the same key and its private half never leaves the chip. A re-imaged
//! device (fresh disk, same TPM) therefore enrols with the same key and
//! comes back as itself; a copied disk on other hardware has a different
//! key, and waits for an operator. The endorsement key (from the TCG's
//! standard ECC template) is derived the same way and reported as a
//! fingerprint, so operators can tell which chip a device has.
//!
//! Spoken as raw TPM 2.0 commands (CreatePrimary, Sign, FlushContext) over
//! the kernel's resource-managed `/dev/tpmrm0`, or over the socket of a
//! software TPM (swtpm, as the lab gives its devices): three commands do
//! not justify a C library in a static agent.

use anyhow::{bail, ensure, Context, Result};
use fogswarm_client::identity::DeviceSigner;
use fogswarm_protocol::identity::PublicKey;
use std::io::{Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Where a device's TPM usually is (the kernel's resource manager).
pub const DEFAULT_DEVICE: &str = "/dev/tpmrm0";

const TPM_ST_NO_SESSIONS: u16 = 0x8001;
const TPM_ST_SESSIONS: u16 = 0x8002;
const TPM_ST_HASHCHECK: u16 = 0x8024;
const TPM_CC_CREATE_PRIMARY: u32 = 0x0000_0131;
const TPM_CC_SIGN: u32 = 0x0000_015D;
const TPM_CC_FLUSH_CONTEXT: u32 = 0x0000_0165;
const TPM_CC_GET_CAPABILITY: u32 = 0x0000_017A;
const TPM_CAP_HANDLES: u32 = 0x0000_0001;
const TRANSIENT_FIRST: u32 = 0x8000_0000;
const TPM_RH_OWNER: u32 = 0x4000_0001;
const TPM_RH_ENDORSEMENT: u32 = 0x4000_000B;
const TPM_RH_NULL: u32 = 0x4000_0007;
const TPM_RS_PW: u32 = 0x4000_0009;
const TPM_ALG_ECC: u16 = 0x0023;
const TPM_ALG_SHA256: u16 = 0x000B;
const TPM_ALG_NULL: u16 = 0x0010;
const TPM_ALG_ECDSA: u16 = 0x0018;
const TPM_ALG_AES: u16 = 0x0006;
const TPM_ALG_CFB: u16 = 0x0043;
const TPM_ECC_NIST_P256: u16 = 0x0003;

/// How the agent reaches a TPM.
enum Transport {
    /// A character device: one write per command, one read per answer.
    Device(std::fs::File),
    /// A stream (swtpm's server socket): the answer's size is in its header.
    Socket(std::os::unix::net::UnixStream),
}

impl Transport {
    fn open(path: &Path) -> Result<Transport> {
        let meta =
            std::fs::metadata(path).with_context(|| format!("the TPM {}", path.display()))?;
        if meta.file_type().is_socket() {
            let stream = std::os::unix::net::UnixStream::connect(path)
                .with_context(|| format!("connecting to the TPM at {}", path.display()))?;
            stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
            return Ok(Transport::Socket(stream));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("opening the TPM {}", path.display()))?;
        Ok(Transport::Device(file))
    }

    /// Sends a command and answers the response's body (after the 10-byte
    /// header), or the TPM's error code.
    fn execute(&mut self, command: &[u8]) -> Result<Vec<u8>> {
        let response = match self {
            Transport::Device(f) => {
                f.write_all(command)?;
                let mut buf = vec![0u8; 4096];
                let n = f.read(&mut buf)?;
                buf.truncate(n);
                buf
            }
            Transport::Socket(s) => {
                s.write_all(command)?;
                let mut header = [0u8; 10];
                s.read_exact(&mut header)?;
                let size =
                    u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
                ensure!(
                    (10..=65_536).contains(&size),
                    "the TPM answered a size of {size}"
                );
                let mut rest = vec![0u8; size - 10];
                s.read_exact(&mut rest)?;
                [header.to_vec(), rest].concat()
            }
        };
        ensure!(
            response.len() >= 10,
            "the TPM's answer is {} bytes",
            response.len()
        );
        let rc = u32::from_be_bytes([response[6], response[7], response[8], response[9]]);
        if rc != 0 {
            bail!("the TPM refused the command: response code {rc:#x}");
        }
        Ok(response[10..].to_vec())
    }
}

/// A command in the TPM's wire format (big-endian).
struct Command(Vec<u8>);

impl Command {
    fn new(tag: u16, code: u32) -> Command {
        let mut c = Command(Vec::new());
        c.u16(tag).u32(0).u32(code);
        c
    }
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// A TPM2B: a u16 size, then the bytes.
    fn sized(&mut self, bytes: &[u8]) -> &mut Self {
        self.u16(bytes.len() as u16);
        self.0.extend_from_slice(bytes);
        self
    }
    /// The empty password session that authorises use of a hierarchy or key
    /// without an auth value.
    fn password_session(&mut self) -> &mut Self {
        self.u32(9).u32(TPM_RS_PW).u16(0).u8(0).u16(0)
    }
    fn finish(mut self) -> Vec<u8> {
        let size = self.0.len() as u32;
        self.0[2..6].copy_from_slice(&size.to_be_bytes());
        self.0
    }
}

/// Reads a response's fields in order.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        ensure!(
            self.0.len() >= n,
            "the TPM's answer is shorter than its fields"
        );
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn sized(&mut self) -> Result<Vec<u8>> {
        let n = self.u16()? as usize;
        Ok(self.take(n)?.to_vec())
    }
}

/// The identity key's template: an unrestricted ECDSA P-256 signing key,
/// its `unique` field fogswarm's own so no other program's primary key
/// from the same template is this one.
fn identity_template() -> Vec<u8> {
    let unique = ring::digest::digest(&ring::digest::SHA256, b"fogswarm device identity");
    let mut t = Command(Vec::new());
    // fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth | noDA | sign
    let attributes = (1 << 1) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 10) | (1 << 18);
    t.u16(TPM_ALG_ECC)
        .u16(TPM_ALG_SHA256)
        .u32(attributes)
        .sized(&[]);
    t.u16(TPM_ALG_NULL) // no symmetric (not a storage key)
        .u16(TPM_ALG_ECDSA)
        .u16(TPM_ALG_SHA256)
        .u16(TPM_ECC_NIST_P256)
        .u16(TPM_ALG_NULL) // kdf
        .sized(unique.as_ref())
        .sized(&[]);
    t.0
}

/// The TCG's ECC NIST P-256 endorsement key template (EK Credential
/// Profile, template L-2): the key a TPM's EK certificate names.
fn endorsement_template() -> Vec<u8> {
    const POLICY_A: [u8; 32] = [
        0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xB3, 0xF8, 0x1A, 0x90, 0xCC, 0x8D, 0x46, 0xA5, 0xD7,
        0x24, 0xFD, 0x52, 0xD7, 0x6E, 0x06, 0x52, 0x0B, 0x64, 0xF2, 0xA1, 0xDA, 0x1B, 0x33, 0x14,
        0x69, 0xAA,
    ];
    let mut t = Command(Vec::new());
    // fixedTPM | fixedParent | sensitiveDataOrigin | adminWithPolicy | restricted | decrypt
    let attributes = (1 << 1) | (1 << 4) | (1 << 5) | (1 << 7) | (1 << 16) | (1 << 17);
    t.u16(TPM_ALG_ECC)
        .u16(TPM_ALG_SHA256)
        .u32(attributes)
        .sized(&POLICY_A);
    t.u16(TPM_ALG_AES)
        .u16(128)
        .u16(TPM_ALG_CFB)
        .u16(TPM_ALG_NULL) // scheme
        .u16(TPM_ECC_NIST_P256)
        .u16(TPM_ALG_NULL) // kdf
        .sized(&[0u8; 32])
        .sized(&[0u8; 32]);
    t.0
}

/// Makes (derives) a primary key under `hierarchy`: its handle and its
/// public point (SEC1, uncompressed).
fn create_primary(tpm: &mut Transport, hierarchy: u32, template: &[u8]) -> Result<(u32, Vec<u8>)> {
    let mut c = Command::new(TPM_ST_SESSIONS, TPM_CC_CREATE_PRIMARY);
    c.u32(hierarchy).password_session();
    c.u16(4).u16(0).u16(0); // inSensitive: no auth value, no data
    c.sized(template);
    c.u16(0); // outsideInfo
    c.u32(0); // creationPCR: none
    let body = tpm.execute(&c.finish())?;
    let mut r = Reader(&body);
    let handle = r.u32()?;
    let _parameter_size = r.u32()?;
    let public = r.sized()?;
    let mut p = Reader(&public);
    ensure!(
        p.u16()? == TPM_ALG_ECC,
        "the TPM made a key that is not ECC"
    );
    p.u16()?; // nameAlg
    p.u32()?; // attributes
    p.sized()?; // authPolicy
    if p.u16()? != TPM_ALG_NULL {
        p.u16()?; // keyBits
        p.u16()?; // mode
    }
    if p.u16()? != TPM_ALG_NULL {
        p.u16()?; // the scheme's hash
    }
    ensure!(
        p.u16()? == TPM_ECC_NIST_P256,
        "the TPM made a key on another curve"
    );
    if p.u16()? != TPM_ALG_NULL {
        p.u16()?; // the kdf's hash
    }
    let (x, y) = (p.sized()?, p.sized()?);
    let mut point = vec![4u8];
    point.extend(left_pad(&x)?);
    point.extend(left_pad(&y)?);
    Ok((handle, point))
}

fn left_pad(v: &[u8]) -> Result<[u8; 32]> {
    ensure!(v.len() <= 32, "a P-256 coordinate of {} bytes", v.len());
    let mut out = [0u8; 32];
    out[32 - v.len()..].copy_from_slice(v);
    Ok(out)
}

fn flush(tpm: &mut Transport, handle: u32) -> Result<()> {
    let mut c = Command::new(TPM_ST_NO_SESSIONS, TPM_CC_FLUSH_CONTEXT);
    c.u32(handle);
    tpm.execute(&c.finish()).map(|_| ())
}

/// Flushes transient objects an earlier agent left loaded: one killed (a
/// power cut, a reboot) never flushed its key, and a TPM without a
/// resource manager (swtpm) keeps it, with room for only a few. Under the
/// kernel's resource manager the list holds only this connection's own.
fn flush_leftovers(tpm: &mut Transport) -> Result<()> {
    let mut c = Command::new(TPM_ST_NO_SESSIONS, TPM_CC_GET_CAPABILITY);
    c.u32(TPM_CAP_HANDLES).u32(TRANSIENT_FIRST).u32(16);
    let body = tpm.execute(&c.finish())?;
    let mut r = Reader(&body);
    r.take(1)?; // moreData
    ensure!(
        r.u32()? == TPM_CAP_HANDLES,
        "the TPM answered another capability"
    );
    let count = r.u32()?;
    for _ in 0..count.min(16) {
        let handle = r.u32()?;
        flush(tpm, handle).with_context(|| format!("flushing the leftover object {handle:#x}"))?;
    }
    Ok(())
}

/// The device's identity key, held in its TPM.
pub struct TpmKey {
    device_id: String,
    public: PublicKey,
    endorsement: String,
    path: PathBuf,
    tpm: Mutex<(Transport, u32)>,
}

impl TpmKey {
    /// Derives the identity key in the TPM at `path` (kept loaded while
    /// the agent runs) and the endorsement key's fingerprint.
    pub fn open(device_id: &str, path: &Path) -> Result<TpmKey> {
        let mut tpm = Transport::open(path)?;
        flush_leftovers(&mut tpm).context("freeing the TPM's transient objects")?;
        let (ek_handle, ek_point) =
            create_primary(&mut tpm, TPM_RH_ENDORSEMENT, &endorsement_template())
                .context("deriving the TPM's endorsement key")?;
        let _ = flush(&mut tpm, ek_handle);
        let (handle, point) = create_primary(&mut tpm, TPM_RH_OWNER, &identity_template())
            .context("deriving the identity key in the TPM")?;
        Ok(TpmKey {
            device_id: device_id.to_string(),
            public: PublicKey::from_sec1(&point)?,
            endorsement: PublicKey::from_sec1(&ek_point)?.fingerprint(),
            path: path.to_path_buf(),
            tpm: Mutex::new((tpm, handle)),
        })
    }

    /// The endorsement key's fingerprint (16 hex digits).
    pub fn endorsement(&self) -> &str {
        &self.endorsement
    }

    fn sign_digest(&self, digest: &[u8]) -> Result<Vec<u8>> {
        let mut guard = self.tpm.lock().unwrap_or_else(|p| p.into_inner());
        let (tpm, handle) = &mut *guard;
        let mut c = Command::new(TPM_ST_SESSIONS, TPM_CC_SIGN);
        c.u32(*handle).password_session();
        c.sized(digest);
        c.u16(TPM_ALG_ECDSA).u16(TPM_ALG_SHA256);
        c.u16(TPM_ST_HASHCHECK).u32(TPM_RH_NULL).sized(&[]);
        let body = tpm
            .execute(&c.finish())
            .with_context(|| format!("signing with the TPM at {}", self.path.display()))?;
        let mut r = Reader(&body);
        let _parameter_size = r.u32()?;
        ensure!(
            r.u16()? == TPM_ALG_ECDSA,
            "the TPM signed with another scheme"
        );
        r.u16()?; // hash
        let (sig_r, sig_s) = (r.sized()?, r.sized()?);
        Ok([left_pad(&sig_r)?, left_pad(&sig_s)?].concat())
    }
}

impl Drop for TpmKey {
    fn drop(&mut self) {
        // A software TPM without a resource manager keeps the key loaded
        // otherwise; the kernel's resource manager flushes it anyway.
        let mut guard = self.tpm.lock().unwrap_or_else(|p| p.into_inner());
        let (tpm, handle) = &mut *guard;
        let _ = flush(tpm, *handle);
    }
}

impl DeviceSigner for TpmKey {
    fn device_id(&self) -> &str {
        &self.device_id
    }

    fn public_key(&self) -> &PublicKey {
        &self.public
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        let digest = ring::digest::digest(&ring::digest::SHA256, message);
        self.sign_digest(digest.as_ref())
            .map_err(|e| format!("{e:#}"))
    }
}

/// The TPM an agent uses: the configured one (`none`: the file key), else
/// the kernel's resource manager when the device has one.
pub fn configured(setting: Option<&str>) -> Option<PathBuf> {
    match setting {
        Some("none") | Some("") => None,
        Some(path) => Some(PathBuf::from(path)),
        None => Path::new(DEFAULT_DEVICE)
            .exists()
            .then(|| PathBuf::from(DEFAULT_DEVICE)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a real software TPM (Debian's swtpm): the key signs what its public half verifies, the same TPM
    /// derives the same key again (a re-imaged device), another TPM
    /// another key.
    #[test]
    fn a_software_tpm_signs_and_derives_the_same_key_again() {
        let swtpm = Swtpm::start().expect("swtpm (apt-get install swtpm; scripts/test does)");
        let key = TpmKey::open("dev1", &swtpm.socket).expect("tpm key");
        let sig = key.sign(b"a request").expect("sign");
        assert_eq!(sig.len(), 64);
        assert!(key.public_key().verifies(b"a request", &sig));
        assert!(!key.public_key().verifies(b"another request", &sig));
        let first = key.public_key().clone();
        let ek = key.endorsement().to_string();
        drop(key);
        let again = TpmKey::open("dev1", &swtpm.socket).expect("tpm key again");
        assert_eq!(
            again.public_key(),
            &first,
            "the same TPM makes the same key"
        );
        assert_eq!(again.endorsement(), ek);
        drop(again);
        // Agents killed without flushing (reboots) leave keys loaded until
        // the TPM has no room for another; the next start still works.
        let mut leftovers = 0;
        for _ in 0..10 {
            let mut tpm = Transport::open(&swtpm.socket).expect("tpm");
            match create_primary(&mut tpm, TPM_RH_OWNER, &identity_template()) {
                Ok(_) => leftovers += 1,
                Err(e) => {
                    assert!(format!("{e:#}").contains("0x902"), "{e:#}");
                    break;
                }
            }
        }
        assert!(leftovers >= 2, "{leftovers} leftovers");
        let after_reboots = TpmKey::open("dev1", &swtpm.socket).expect("after leftovers");
        assert_eq!(after_reboots.public_key(), &first);
        drop(after_reboots);
        let other = Swtpm::start().expect("a second swtpm");
        let elsewhere = TpmKey::open("dev1", &other.socket).expect("other tpm");
        assert_ne!(elsewhere.public_key(), &first);
        assert_ne!(elsewhere.endorsement(), ek);
    }

    struct Swtpm {
        child: std::process::Child,
        socket: PathBuf,
        _dir: tempfile::TempDir,
    }

    impl Swtpm {
        fn start() -> Option<Swtpm> {
            let dir = tempfile::tempdir().ok()?;
            let socket = dir.path().join("sock");
            let child = std::process::Command::new("swtpm")
                .args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
                .arg("--tpmstate")
                .arg(format!("dir={}", dir.path().display()))
                .arg("--server")
                .arg(format!("type=unixio,path={}", socket.display()))
                .arg("--ctrl")
                .arg(format!(
                    "type=unixio,path={}",
                    dir.path().join("ctrl").display()
                ))
                .spawn()
                .ok()?;
            for _ in 0..100 {
                if socket.exists() {
                    return Some(Swtpm {
                        child,
                        socket,
                        _dir: dir,
                    });
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            None
        }
    }

    impl Drop for Swtpm {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
