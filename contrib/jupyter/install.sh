#!/bin/sh
# Installs the mesh kernel provisioner and the mesh-python3 kernelspec into
# the Python that Debian's jupyter_client uses, or removes them (--uninstall).
#
# It touches exactly three paths (printed as it goes):
#   $SITE_DIR/mesh_provisioner/                       the provisioner module (its relay and guard)
#   $SITE_DIR/mesh_provisioner-VERSION.dist-info/     its entry point (jupyter_client.kernel_provisioners)
#   $KERNELS_DIR/mesh-python3/                        the kernelspec
# SITE_DIR defaults to the first site-packages of $PYTHON (/usr/bin/python3:
# /usr/local/lib/python3.X/dist-packages, Debian's place for local modules);
# KERNELS_DIR to /usr/local/share/jupyter/kernels. Set them to install
# elsewhere (the tests do).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-/usr/bin/python3}
if [ -z "${SITE_DIR:-}" ]; then
  SITE_DIR=$("$PYTHON" -c 'import site; print(site.getsitepackages()[0])')
fi
KERNELS_DIR=${KERNELS_DIR:-/usr/local/share/jupyter/kernels}
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$here/mesh_provisioner/__init__.py")
module="$SITE_DIR/mesh_provisioner"
distinfo="$SITE_DIR/mesh_provisioner-$version.dist-info"
spec="$KERNELS_DIR/mesh-python3"

if [ "${1:-}" = "--uninstall" ]; then
  for p in "$module" "$distinfo" "$spec"; do
    if [ -e "$p" ]; then rm -rf "$p"; echo "removed $p"; fi
  done
  exit 0
fi
if ! "$PYTHON" -c 'import jupyter_client, sys; sys.exit(int(jupyter_client.version_info[0]) < 7)' 2>/dev/null; then
  echo "install.sh: $PYTHON has no jupyter_client 7 or later: apt-get install python3-jupyter-client python3-ipykernel" >&2
  exit 1
fi
mkdir -p "$module" "$distinfo" "$spec"
cp "$here/mesh_provisioner/__init__.py" "$here/mesh_provisioner/relay.py" "$here/mesh_provisioner/guard.py" "$module/"
echo "installed $module"
cat > "$distinfo/METADATA" <<META
Metadata-Version: 2.1
Name: mesh-provisioner
Version: $version
Summary: Jupyter kernel provisioner that starts kernels on the agent's mesh
META
cat > "$distinfo/entry_points.txt" <<ENTRY
[jupyter_client.kernel_provisioners]
mesh-provisioner = mesh_provisioner:MeshProvisioner
ENTRY
echo "mesh_provisioner" > "$distinfo/top_level.txt"
echo "installed $distinfo"
cp "$here/kernels/mesh-python3/kernel.json" "$spec/kernel.json"
echo "installed $spec"
