//! The rig's workload image: the sensor sample (`images/sensor`, appends
//! fsync'ed readings to its `/data` volume), built for this machine's
//! architecture with `berth image build`. A variant carries an extra
//! incompressible payload of a chosen size, so an update has something to
//! pull (for partitions mid-pull and corrupted blobs); variants are
//! deterministic: the same size and seed give the same digest.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest as _, Sha256};

use super::peers::run;
use super::LabError;

const SENSOR_C: &str = include_str!("../../../images/sensor/sensor.c");
const RECIPE: &str = include_str!("../../../images/sensor/recipe.toml");

/// A built image layout and the manifest digest for this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub layout: PathBuf,
    pub arch: &'static str,
    pub manifest: String,
}

/// This machine's architecture as OCI names it.
pub fn native_arch() -> Result<&'static str, LabError> {
    match std::env::consts::ARCH {
        "x86_64" => Ok("amd64"),
        "aarch64" => Ok("arm64"),
        "arm" => Ok("arm"),
        other => Err(LabError::Step {
            what: "building the sensor image".into(),
            detail: format!("no OCI architecture for {other}"),
        }),
    }
}

fn io(p: &Path) -> impl FnOnce(std::io::Error) -> LabError + '_ {
    move |e| LabError::io(p, e)
}

/// `len` deterministic incompressible bytes from `seed`.
fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut i = 0u64;
    while out.len() < len {
        let mut h = Sha256::new();
        h.update(seed.to_le_bytes());
        h.update(i.to_le_bytes());
        out.extend_from_slice(&h.finalize());
        i += 1;
    }
    out.truncate(len);
    out
}

/// Builds the sensor image with a payload of `payload_kib` (0: none) into
/// `dir/sensor-<kib>-<seed>`, compiling the sensor once into `dir/bin`.
pub fn build_sensor(
    dir: &Path,
    berth: &Path,
    payload_kib: u64,
    seed: u64,
) -> Result<Image, LabError> {
    let arch = native_arch()?;
    let bin = dir.join("bin/sensor");
    if !bin.exists() {
        std::fs::create_dir_all(dir.join("bin")).map_err(io(dir))?;
        let src = dir.join("bin/sensor.c");
        std::fs::write(&src, SENSOR_C).map_err(io(&src))?;
        run(
            "compiling the sensor workload (gcc with static glibc)",
            Command::new("gcc")
                .args(["-static", "-O2", "-Wl,--build-id=none", "-o"])
                .arg(&bin)
                .arg(&src),
        )?;
        run("stripping the sensor", Command::new("strip").arg(&bin))?;
    }
    let name = format!("sensor-{payload_kib}-{seed}");
    let layout = dir.join(&name);
    let stage = dir.join(format!("{name}.stage"));
    let _ = std::fs::remove_dir_all(&stage);
    for d in ["proc", "sys", "dev", "tmp", "run", "data", "etc"] {
        let p = stage.join("rootfs").join(d);
        std::fs::create_dir_all(&p).map_err(io(&p))?;
    }
    let etc = stage.join("rootfs/etc");
    std::fs::write(
        etc.join("passwd"),
        "root:x:0:0:root:/:/bin/false\napp:x:1000:1000:app:/data:/bin/false\n",
    )
    .map_err(io(&etc))?;
    std::fs::write(etc.join("group"), "root:x:0:\napp:x:1000:\n").map_err(io(&etc))?;
    if payload_kib > 0 {
        let p = stage.join("rootfs/payload");
        std::fs::write(&p, payload(seed, (payload_kib * 1024) as usize)).map_err(io(&p))?;
    }
    let per_arch = stage.join(format!("rootfs-{arch}"));
    std::fs::create_dir_all(&per_arch).map_err(io(&per_arch))?;
    std::fs::copy(&bin, per_arch.join("sensor")).map_err(io(&bin))?;
    let recipe = RECIPE.replace(
        "architectures = [\"amd64\", \"arm64\"]",
        &format!("architectures = [\"{arch}\"]"),
    );
    let rp = stage.join("recipe.toml");
    std::fs::write(&rp, recipe).map_err(io(&rp))?;
    let _ = std::fs::remove_dir_all(&layout);
    let out = run(
        "building the sensor image (berth image build)",
        Command::new(berth)
            .args(["image", "build"])
            .arg(&stage)
            .arg("-o")
            .arg(&layout),
    )?;
    let _ = std::fs::remove_dir_all(&stage);
    let out = String::from_utf8_lossy(&out);
    let manifest = out
        .lines()
        .find_map(|l| l.strip_prefix(&format!("manifest {arch} ")))
        .map(|s| s.trim().to_string())
        .ok_or_else(|| LabError::Step {
            what: "building the sensor image".into(),
            detail: format!("berth image build printed no {arch} manifest: {out}"),
        })?;
    Ok(Image {
        layout,
        arch,
        manifest,
    })
}

/// The digests of every blob (config and layers) of `image`'s manifest.
pub fn blobs(image: &Image) -> Result<Vec<String>, LabError> {
    let hex = image.manifest.trim_start_matches("sha256:");
    let p = image.layout.join("blobs/sha256").join(hex);
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).map_err(io(&p))?)
        .map_err(|e| LabError::Step {
            what: "reading the sensor image manifest".into(),
            detail: e.to_string(),
        })?;
    let mut out = vec![];
    if let Some(c) = m["config"]["digest"].as_str() {
        out.push(c.to_string());
    }
    for l in m["layers"].as_array().into_iter().flatten() {
        if let Some(d) = l["digest"].as_str() {
            out.push(d.to_string());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_deterministic_and_seeded() {
        assert_eq!(payload(1, 100), payload(1, 100));
        assert_ne!(payload(1, 100), payload(2, 100));
        assert_eq!(payload(3, 1000).len(), 1000);
    }
}
