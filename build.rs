//! Embeds the dashboard (`ui/`, every file under it) into the binary: writes
//! `$OUT_DIR/ui_assets.rs`, a table of each file's path (relative to `ui/`, with `/`) and its
//! bytes, which `src/ui.rs` serves at `/ui/<path>`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("ui");
    println!("cargo:rerun-if-changed=ui");
    let mut found = Vec::new();
    files(&root, &mut found)?;
    let mut table = String::from("pub static ASSETS: &[(&str, &[u8])] = &[\n");
    for path in found {
        let name = path
            .strip_prefix(&root)?
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        // The path from the crate's root at compile time, not this script's: a checkout moved
        // (or a worktree sharing the target folder) never reads another checkout's files.
        writeln!(
            table,
            "    ({name:?}, include_bytes!(concat!(env!(\"CARGO_MANIFEST_DIR\"), {:?}))),",
            format!("/ui/{name}")
        )?;
    }
    table.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("ui_assets.rs");
    std::fs::write(out, table)?;
    Ok(())
}
