package mqtthooks

// hookID numbers the hooks, to index a Snapshot's per-hook plugin lists.
type hookID uint8

const (
	hookAuthOnRegister hookID = iota
	hookAuthOnRegisterM5
	hookOnAuthM5
	hookOnRegister
	hookOnRegisterM5
	hookOnClientWakeup
	hookOnClientOffline
	hookOnClientGone
	hookOnSessionExpired
	hookOnMessageDrop
	numHooks
)

var hookNames = [numHooks]string{
	"AuthOnRegister", "AuthOnRegisterM5", "OnAuthM5", "OnRegister", "OnRegisterM5",
	"OnClientWakeup", "OnClientOffline", "OnClientGone", "OnSessionExpired", "OnMessageDrop",
}

func (h hookID) String() string { return hookNames[h] }

// conditional reports whether the hook decides (and so a Subset filters it).
func (h hookID) conditional() bool { return h <= hookOnAuthM5 }

// plugin is a registered plugin with its hooks, found once by type assertion.
type plugin struct {
	name        string
	priority    int
	hasPriority bool
	seq         uint64

	authOnRegister   AuthOnRegister
	authOnRegisterM5 AuthOnRegisterM5
	onAuthM5         OnAuthM5
	onRegister       OnRegister
	onRegisterM5     OnRegisterM5
	onClientWakeup   OnClientWakeup
	onClientOffline  OnClientOffline
	onClientGone     OnClientGone
	onSessionExpired OnSessionExpired
	onMessageDrop    OnMessageDrop
}

// discover returns p's hooks under name, or nil when p implements none.
func discover(name string, p any) *plugin {
	pl := &plugin{name: name}
	pl.authOnRegister, _ = p.(AuthOnRegister)
	pl.authOnRegisterM5, _ = p.(AuthOnRegisterM5)
	pl.onAuthM5, _ = p.(OnAuthM5)
	pl.onRegister, _ = p.(OnRegister)
	pl.onRegisterM5, _ = p.(OnRegisterM5)
	pl.onClientWakeup, _ = p.(OnClientWakeup)
	pl.onClientOffline, _ = p.(OnClientOffline)
	pl.onClientGone, _ = p.(OnClientGone)
	pl.onSessionExpired, _ = p.(OnSessionExpired)
	pl.onMessageDrop, _ = p.(OnMessageDrop)
	for h := range numHooks {
		if pl.implements(h) {
			return pl
		}
	}
	return nil
}

func (p *plugin) implements(h hookID) bool {
	switch h {
	case hookAuthOnRegister:
		return p.authOnRegister != nil
	case hookAuthOnRegisterM5:
		return p.authOnRegisterM5 != nil
	case hookOnAuthM5:
		return p.onAuthM5 != nil
	case hookOnRegister:
		return p.onRegister != nil
	case hookOnRegisterM5:
		return p.onRegisterM5 != nil
	case hookOnClientWakeup:
		return p.onClientWakeup != nil
	case hookOnClientOffline:
		return p.onClientOffline != nil
	case hookOnClientGone:
		return p.onClientGone != nil
	case hookOnSessionExpired:
		return p.onSessionExpired != nil
	case hookOnMessageDrop:
		return p.onMessageDrop != nil
	}
	return false
}

// halfPair says which MQTT 3 / MQTT 5 pair p implements only half of, or "".
func (p *plugin) halfPair() string {
	switch {
	case p.authOnRegister != nil && p.authOnRegisterM5 == nil:
		return "AuthOnRegister without AuthOnRegisterM5: MQTT 5 clients never reach it"
	case p.authOnRegisterM5 != nil && p.authOnRegister == nil && p.onAuthM5 == nil:
		return "AuthOnRegisterM5 without AuthOnRegister: MQTT 3 clients never reach it"
	case p.onRegister != nil && p.onRegisterM5 == nil:
		return "OnRegister without OnRegisterM5: it never hears of MQTT 5 clients"
	case p.onRegisterM5 != nil && p.onRegister == nil && p.onAuthM5 == nil:
		return "OnRegisterM5 without OnRegister: it never hears of MQTT 3 clients"
	}
	return ""
}
