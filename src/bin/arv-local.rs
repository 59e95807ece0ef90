//! `arv-local`: put files into, and read them back from, a crunch-run local store
//! (`crunch-run --local-store DIR`), so a container can be run without an Arvados cluster.
//!
//!   arv-local put DIR NAME FILE...   store the files as one collection, print its PDH
//!   arv-local cat DIR PDH PATH       write one file of a collection to stdout
//!   arv-local show DIR UUID          print a container record

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::ExitCode;

use crunch_run::arvados::manifest::{Manifest, single_stream_manifest};
use crunch_run::store::local::LocalStore;
use crunch_run::store::{ApiStore, BlockStore, FileBlocks};
use md5::{Digest, Md5};

const BLOCK_SIZE: u64 = 64 << 20;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["put", dir, name, files @ ..] if !files.is_empty() => put(dir, name, files),
        ["cat", dir, pdh, path] => cat(dir, pdh, path),
        ["show", dir, uuid] => show(dir, uuid),
        _ => {
            eprintln!("usage: arv-local put DIR NAME FILE... | cat DIR PDH PATH | show DIR UUID");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("arv-local: {e}");
            ExitCode::from(1)
        }
    }
}

type Error = Box<dyn std::error::Error>;

fn put(dir: &str, name: &str, files: &[&str]) -> Result<(), Error> {
    let store = LocalStore::open(Path::new(dir))?;
    let mut entries = Vec::new();
    for path in files {
        let size = std::fs::metadata(path)?.len();
        let mut locators = Vec::new();
        let mut offset = 0;
        while offset < size {
            let len = BLOCK_SIZE.min(size - offset);
            let open = || -> io::Result<Box<dyn Read + Send>> {
                let mut f = File::open(path)?;
                f.seek(SeekFrom::Start(offset))?;
                Ok(Box::new(f.take(len)))
            };
            let mut md5 = Md5::new();
            io::copy(&mut open()?, &mut HashWriter(&mut md5))?;
            let hash: String = md5.finalize().iter().map(|b| format!("{b:02x}")).collect();
            locators.push(store.put_block(&hash, len, &open)?);
            offset += len;
        }
        let base = Path::new(path)
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or("file name is not UTF-8")?;
        entries.push(FileBlocks {
            name: base.to_string(),
            locators,
            size,
        });
    }
    let saved = store.create_collection(name, &single_stream_manifest(&entries))?;
    println!("{}", saved.portable_data_hash);
    Ok(())
}

fn cat(dir: &str, pdh: &str, path: &str) -> Result<(), Error> {
    let store = LocalStore::open(Path::new(dir))?;
    let manifest = Manifest::parse(&store.get_collection_manifest(pdh)?)?;
    let file = manifest
        .files()
        .into_iter()
        .find(|f| f.path == path)
        .ok_or_else(|| format!("{pdh} has no file {path}"))?;
    let stdout = io::stdout();
    let mut out = stdout.lock();
    for range in &file.ranges {
        let mut block = Vec::new();
        store.get_block(&range.locator, &mut block)?;
        let start = range.offset as usize;
        let end = start + range.len as usize;
        out.write_all(
            block
                .get(start..end)
                .ok_or("block shorter than its file segment")?,
        )?;
    }
    Ok(())
}

fn show(dir: &str, uuid: &str) -> Result<(), Error> {
    let store = LocalStore::open(Path::new(dir))?;
    println!(
        "{}",
        serde_json::to_string_pretty(&store.get_container(uuid)?)?
    );
    Ok(())
}

struct HashWriter<'a>(&'a mut Md5);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
