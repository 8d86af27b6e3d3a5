#!/usr/bin/env bash
# Builds the Debian package agent_<version>_<arch>.deb with dpkg-deb from
# packaging/: the binary in /usr/bin, the systemd unit, /etc/agent.d and the
# maintainer scripts. Usage: scripts/mkdeb.sh OUTDIR [VERSION]
# (make deb calls it). Files are owned by root in the package
# (--root-owner-group), so no fakeroot is needed. BIN=path packages a binary
# built already (the tests do) instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/mkdeb.sh OUTDIR [VERSION]}
version=${2:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
GO=${GO:-go}
command -v dpkg-deb >/dev/null || { echo "mkdeb: dpkg-deb is missing: apt-get install dpkg" >&2; exit 1; }

# A Debian version starts with a digit and has no '-' outside the revision:
# v1.2.3 is 1.2.3, a bare commit 1a2b3c-dirty is 0.0+1a2b3c+dirty.
deb_version=${version#v}
deb_version=${deb_version//-/+}
[[ $deb_version =~ ^[0-9]+\. ]] || deb_version="0.0+$deb_version"

goarch=$($GO env GOARCH)
case $goarch in
	386) arch=i386 ;;
	arm) arch=armhf ;;
	*) arch=$goarch ;;
esac

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
install -d -m 0755 "$stage/DEBIAN" "$stage/usr/bin" "$stage/usr/lib/systemd/system" \
	"$stage/usr/share/doc/agent" "$stage/etc/agent.d"
chmod 0755 "$stage"
if [ -n "${BIN:-}" ]; then
	install -m 0755 "$BIN" "$stage/usr/bin/agent"
else
	$GO build -ldflags "-s -w -X github.com/meshagent/agent/agent.Version=$version" -o "$stage/usr/bin/agent" .
	chmod 0755 "$stage/usr/bin/agent"
fi
install -m 0644 packaging/agent.service "$stage/usr/lib/systemd/system/agent.service"
install -m 0644 packaging/agent.d/10-agent.json packaging/agent.d/README "$stage/etc/agent.d/"
install -m 0644 README.md "$stage/usr/share/doc/agent/README.md"
install -m 0644 LICENSE "$stage/usr/share/doc/agent/copyright"
install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm "$stage/DEBIAN/"
install -m 0644 packaging/debian/conffiles "$stage/DEBIAN/"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s/@VERSION@/$deb_version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" \
	packaging/debian/control.in >"$stage/DEBIAN/control"
chmod 0644 "$stage/DEBIAN/control"

mkdir -p "$out"
deb="$out/agent_${deb_version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "$deb"
