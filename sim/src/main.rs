//! `pvirq-sim`: the simulator CLI (the scenario runner is being built; see the README).

fn main() {
    println!(
        "pvirq-sim {}: scenario runner not built yet",
        env!("CARGO_PKG_VERSION")
    );
}
