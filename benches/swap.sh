#!/bin/sh
# Hot-swap benchmark: builds the `versioned` test fixture as versions
# 1.0.0, 1.1.0 and 2.0.0, signs them with the development key, and runs
# `palisade bench --swap` on them with the repository's palisade.toml,
# which trusts that key. Extra arguments go to `palisade bench`, such as
# `--engine-runs 2000 --tasks 4 --swaps 100`.
set -eu
cd "$(dirname "$0")/.."
rustup target add wasm32-wasip2 >/dev/null
cargo xtask build-plugins
cargo build --release --quiet
out=target/swap-bench
mkdir -p "$out"
for version in 1.0.0 1.1.0 2.0.0; do
    PALISADE_FIXTURE_VERSION=$version cargo build --quiet --release \
        --manifest-path plugins/versioned/Cargo.toml --target wasm32-wasip2 \
        --target-dir target/swap-bench/build
    cp target/swap-bench/build/wasm32-wasip2/release/versioned.wasm "$out/versioned-$version.wasm"
    ./target/release/palisade plugin sign "$out/versioned-$version.wasm" \
        --key plugins/target/dev-signing/palisade-dev.key >/dev/null
done
./target/release/palisade --config palisade.toml bench --swap "$out" "$@"
