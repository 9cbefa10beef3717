// `sqlx::migrate!` embeds the files of `migrations/` with `include_str!`,
// which notices edits to existing files but not new ones: rebuild when the
// directory changes.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
