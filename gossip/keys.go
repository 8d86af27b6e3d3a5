package gossip

import (
	"fmt"

	"github.com/hashicorp/serf/serf"
)

// KeyOp is a keyring operation run across the whole mesh.
type KeyOp string

// The keyring operations.
const (
	KeyInstall KeyOp = "install"
	KeyUse     KeyOp = "use"
	KeyRemove  KeyOp = "remove"
	KeyList    KeyOp = "list"
)

// KeyResult is the mesh's answer to a keyring operation.
type KeyResult struct {
	Messages map[string]string // node -> why it failed
	Keys     map[string]int    // base64 key -> nodes holding it (list only)
	NumNodes int
	NumResp  int
	NumErr   int
}

// Keys runs op on every node of the mesh. Per-node failures are in the
// result; the error is set when any node failed.
func (n *Node) Keys(op KeyOp, key string) (KeyResult, error) {
	km := n.serf.KeyManager()
	var (
		r   *serf.KeyResponse
		err error
	)
	switch op {
	case KeyInstall:
		r, err = km.InstallKey(key)
	case KeyUse:
		r, err = km.UseKey(key)
	case KeyRemove:
		r, err = km.RemoveKey(key)
	case KeyList:
		r, err = km.ListKeys()
	default:
		return KeyResult{}, fmt.Errorf("keyring operation %q is not known: use install, use, remove or list", op)
	}
	if r == nil {
		return KeyResult{}, err
	}
	return KeyResult{Messages: r.Messages, Keys: r.Keys, NumNodes: r.NumNodes, NumResp: r.NumResp, NumErr: r.NumErr}, err
}
