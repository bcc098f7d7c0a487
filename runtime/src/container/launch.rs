//! Launching a verified image: measurement, id range (or, unprivileged,
//! the workload's own user namespace), hardened spec, read-only view.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{cgroup_name, BundleOptions, Container, Output, Runtime};
use crate::cgroups;
use crate::error::RuntimeError;
use crate::idmap::{self, IdRange};
use crate::image::Image;
use crate::measure;
use crate::names::ContainerId;
use crate::rootfs::ImageView;
use crate::spec::{self, WorkloadOptions};

impl Runtime {
    /// Verifies an image and launches a workload from it with the hardened
    /// defaults; the container is started before this returns.
    pub fn launch(
        &mut self,
        id: &ContainerId,
        image: &Image,
        opts: &WorkloadOptions,
        output: Output,
    ) -> Result<Container, RuntimeError> {
        let mut c = self.create_from_image(id, image, opts, output)?;
        if let Err(e) = c.start() {
            let _ = c.delete(true);
            return Err(e);
        }
        Ok(c)
    }

    /// Like [`Runtime::launch`] but leaves the container created, not started.
    pub fn create_from_image(
        &mut self,
        id: &ContainerId,
        image: &Image,
        opts: &WorkloadOptions,
        output: Output,
    ) -> Result<Container, RuntimeError> {
        self.refuse_duplicate(id)?;
        let rootfs = fs::canonicalize(&image.rootfs).map_err(|source| RuntimeError::Image {
            path: image.rootfs.clone(),
            source,
        })?;
        let placement = self.limits.place(
            &cgroup_name(&self.cfg.root, id.as_str()),
            self.cfg.allow_unlimited,
        )?;
        let cgroups_path = match &placement {
            cgroups::Placement::Limited(p) | cgroups::Placement::Unlimited(p) => p.clone(),
        };
        let unprivileged = crate::rootless::unprivileged();
        // As root everything below checks and launches one read-only view of
        // the image: no path is looked up again after the measurement.
        // Unprivileged, the image is measured through its path, on the host
        // (inside the workload's user namespace its owners would read
        // differently), before the runtime enters that namespace, where it
        // takes the view and checks that it shows the same directory.
        let (mut view, range, maps, pending) = if unprivileged {
            let measured = fs::metadata(&rootfs).map_err(|source| RuntimeError::Image {
                path: rootfs.clone(),
                source,
            })?;
            measure::verify_tree(
                &rootfs,
                &image.measurement,
                || image.recorded_manifest(),
                self.cfg.measure_threads,
            )?;
            tracing::debug!(container = %id, "rootfs verified");
            let (range, maps) = self.rootless_maps(id)?;
            let entered = crate::rootless::enter(&maps)
                .map_err(RuntimeError::from)
                .and_then(|()| {
                    let view = ImageView::open(&rootfs)?;
                    let shown = fs::metadata(view.path())?;
                    if (shown.dev(), shown.ino()) != (measured.dev(), measured.ino()) {
                        return Err(RuntimeError::Image {
                            path: rootfs.clone(),
                            source: io::Error::other(
                                "the directory was replaced while it was measured",
                            ),
                        });
                    }
                    Ok(view)
                });
            match entered {
                Ok(view) => (view, range, Some(maps), None),
                Err(e) => {
                    self.release(id);
                    return Err(e);
                }
            }
        } else {
            // The view is measured on a thread of its own while the container
            // is prepared; the verdict is taken before the container is
            // handed out (the end of this function), so nothing from the
            // image runs unverified.
            let view = ImageView::open(&rootfs)?;
            let pending = view.verify_in_background(
                &image.measurement,
                Some(image.manifest.clone()),
                self.cfg.measure_threads,
            )?;
            let range = self.allocator()?.acquire(id.as_str())?;
            (view, Some(range), None, Some(pending))
        };
        tracing::debug!(container = %id, range = ?range, "id range acquired");
        let bundle = self.cfg.root.join("bundles").join(id.as_str());
        let res = (|| {
            // The ids that exist in the workload's user namespace.
            let ids = match (&maps, range) {
                (Some(m), _) => IdRange {
                    start: 0,
                    size: m.size(),
                },
                (None, Some(r)) => r,
                (None, None) => return Err(RuntimeError::Spec("no id range was acquired".into())),
            };
            let mut built = spec::build(
                id.as_str(),
                &view.path(),
                &image.config,
                opts,
                ids,
                &cgroups_path,
            )?;
            let root = oci_spec::runtime::RootBuilder::default()
                .path(bundle.join("rootfs"))
                .readonly(true)
                .build()
                .map_err(|e| RuntimeError::Spec(e.to_string()))?;
            built.spec.set_root(Some(root));
            if let cgroups::Placement::Unlimited(own) = &placement {
                cgroups::strip_limits(&mut built.spec, own);
            }
            if maps.is_some() {
                // The workload shares the user namespace this process entered.
                spec::share_user_namespace(&mut built.spec);
            }
            // Unprivileged, this process is root of the workload's namespace,
            // so the workload's ids are its own.
            let shift = if maps.is_some() { 0 } else { ids.start };
            let owner = (shift + built.process.uid, shift + built.process.gid);
            for v in opts.volumes.iter().filter(|v| v.chown) {
                crate::sys::chown_tree(&v.source, owner).map_err(|source| {
                    RuntimeError::Io(std::io::Error::new(
                        source.kind(),
                        format!(
                            "cannot give volume {} to the container's user (uid {}): {source}",
                            v.source.display(),
                            owner.0
                        ),
                    ))
                })?;
            }
            tracing::debug!(container = %id, "spec built");
            if maps.is_none() {
                view.idmap(ids)?;
                tracing::debug!(container = %id, "rootfs idmapped");
            }
            for dir in [&bundle, &bundle.join("rootfs")] {
                fs::DirBuilder::new()
                    .mode(0o711)
                    .create(dir)
                    .map_err(|source| RuntimeError::StateDir {
                        path: dir.clone(),
                        source,
                    })?;
            }
            check_searchable(&bundle)?;
            built
                .spec
                .save(bundle.join("config.json"))
                .map_err(|e| RuntimeError::Spec(e.to_string()))?;
            self.create_inner(
                id,
                &bundle,
                &built.spec,
                output,
                &BundleOptions::default(),
                Some((range, &view)),
            )
        })();
        // A tampered image is reported as such, also when preparing the
        // container failed as well.
        let verdict = match pending {
            Some(p) => p
                .wait()
                .inspect(|()| tracing::debug!(container = %id, "rootfs verified"))
                .map_err(RuntimeError::from),
            None => Ok(()),
        };
        let res = match (res, verdict) {
            (res, Ok(())) => res,
            (Ok(mut c), Err(e)) => {
                let _ = c.delete(true);
                Err(e)
            }
            (Err(_), Err(e)) => Err(e),
        };
        if res.is_err() {
            let _ = fs::remove_dir_all(&bundle);
            self.release(id);
        }
        res
    }

    /// The user namespace of an unprivileged launch: container root is the
    /// caller; with a subordinate id pool for the caller (`/etc/subuid` and
    /// `/etc/subgid`, or `subid_file` for both), the other ids are a slot of
    /// the pool held by this container.
    fn rootless_maps(
        &mut self,
        id: &ContainerId,
    ) -> Result<(Option<IdRange>, crate::rootless::Maps), RuntimeError> {
        let caller = (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        );
        let uid_file = self
            .cfg
            .subid_file
            .clone()
            .unwrap_or_else(|| PathBuf::from("/etc/subuid"));
        let gid_file = self
            .cfg
            .subid_file
            .clone()
            .unwrap_or_else(|| PathBuf::from("/etc/subgid"));
        let uid_pool = match idmap::pool_from_file(&uid_file, &self.cfg.subid_name) {
            Ok(p) => p,
            Err(idmap::IdMapError::NoEntry { .. } | idmap::IdMapError::Read { .. })
                if self.cfg.subid_file.is_none() =>
            {
                tracing::warn!(
                    name = %self.cfg.subid_name,
                    "no subordinate ids for this name in /etc/subuid: the workload has the caller's uid only"
                );
                return Ok((None, crate::rootless::Maps::new(caller, None)));
            }
            Err(e) => return Err(e.into()),
        };
        let gid_pool = idmap::pool_from_file(&gid_file, &self.cfg.subid_name)?;
        let range = self.allocator()?.acquire(id.as_str())?;
        let index = idmap::slots(&uid_pool, caller.0)?
            .iter()
            .position(|s| *s == range);
        let gids = index.and_then(|i| crate::rootless::gid_slot(&gid_pool, caller.1, i));
        let Some(gids) = gids else {
            self.release(id);
            return Err(idmap::IdMapError::NoEntry {
                name: self.cfg.subid_name.clone(),
                path: gid_file,
            }
            .into());
        };
        Ok((
            Some(range),
            crate::rootless::Maps::new(caller, Some((range, gids))),
        ))
    }
}

/// Every directory above the rootfs must be searchable by others: the
/// container's root is an unprivileged host id that has to reach it.
fn check_searchable(rootfs: &Path) -> Result<(), RuntimeError> {
    let mut p = rootfs.to_path_buf();
    loop {
        let md = fs::metadata(&p).map_err(|source| RuntimeError::Image {
            path: p.clone(),
            source,
        })?;
        if md.permissions().mode() & 0o001 == 0 {
            return Err(RuntimeError::NotSearchable {
                path: p,
                mode: md.permissions().mode() & 0o7777,
            });
        }
        if !p.pop() {
            return Ok(());
        }
    }
}
