package deploy_test

import (
	"context"
	"io"
	"io/fs"
	"maps"
	"net"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/pgsidecar/pgsidecar/config"
	"github.com/pgsidecar/pgsidecar/health"
)

// sidecarImage is the image name the base's kustomization pins.
const sidecarImage = "ghcr.io/pgsidecar/pgsidecar"

// decoder decodes Kubernetes and Prometheus Operator objects strictly: an unknown or
// duplicated field is an error, as kubectl's server-side field validation would make it.
var decoder = func() runtime.Decoder {
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, appsv1.AddToScheme, monitoringv1.AddToScheme} {
		if err := add(scheme); err != nil {
			panic(err)
		}
	}
	return serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer()
}()

// decode returns the typed object of one YAML or JSON document.
func decode(t *testing.T, name string, doc []byte) runtime.Object {
	t.Helper()
	obj, _, err := decoder.Decode(doc, nil, nil)
	if err != nil {
		t.Fatalf("%s: %v\n%s", name, err, doc)
	}
	return obj
}

// render runs kustomize on the base, alone or in an overlay with the given components (paths
// relative to the base), and returns every object decoded.
func render(t *testing.T, components ...string) []runtime.Object {
	t.Helper()
	// An in-memory copy of deploy/kubernetes, so that the overlay needs no file in the tree.
	mem := filesys.MakeFsInMemory()
	err := filepath.WalkDir("kubernetes", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return mem.WriteFile(path.Join("/deploy", filepath.ToSlash(p)), data)
	})
	if err != nil {
		t.Fatal(err)
	}
	dir := "/deploy/kubernetes"
	if len(components) > 0 {
		dir = "/overlay"
		k := "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - ../deploy/kubernetes\ncomponents:\n"
		for _, c := range components {
			k += "  - ../deploy/kubernetes/" + c + "\n"
		}
		if err := mem.WriteFile(dir+"/kustomization.yaml", []byte(k)); err != nil {
			t.Fatal(err)
		}
	}
	resMap, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(mem, dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	var objs []runtime.Object
	for _, r := range resMap.Resources() {
		doc, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		objs = append(objs, decode(t, r.GetKind()+"/"+r.GetName(), doc))
	}
	return objs
}

// only returns the one object of type T among objs.
func only[T runtime.Object](t *testing.T, objs []runtime.Object) T {
	t.Helper()
	var found []T
	for _, o := range objs {
		if v, ok := o.(T); ok {
			found = append(found, v)
		}
	}
	if len(found) != 1 {
		var zero T
		t.Fatalf("want one %T, rendered %d", zero, len(found))
	}
	return found[0]
}

func count[T runtime.Object](objs []runtime.Object) int {
	n := 0
	for _, o := range objs {
		if _, ok := o.(T); ok {
			n++
		}
	}
	return n
}

// sidecar returns the pgsidecar container of the pod and whether it is an init container.
func sidecar(t *testing.T, pod *corev1.PodSpec) (c *corev1.Container, initContainer bool) {
	t.Helper()
	isSidecar := func(c corev1.Container) bool {
		name, _, _ := strings.Cut(c.Image, "@")
		return name == sidecarImage || strings.HasPrefix(name, sidecarImage+":")
	}
	if i := slices.IndexFunc(pod.InitContainers, isSidecar); i >= 0 {
		return &pod.InitContainers[i], true
	}
	if i := slices.IndexFunc(pod.Containers, isSidecar); i >= 0 {
		return &pod.Containers[i], false
	}
	t.Fatalf("no container runs %s", sidecarImage)
	return nil, false
}

func TestKustomizeBase(t *testing.T) {
	objs := render(t)
	if n := count[*monitoringv1.PodMonitor](objs); n != 0 {
		t.Errorf("the base renders %d PodMonitors; it must work without the Prometheus Operator", n)
	}
	dep := only[*appsv1.Deployment](t, objs)
	pod := &dep.Spec.Template.Spec
	c, isInit := sidecar(t, pod)

	t.Run("native sidecar", func(t *testing.T) {
		if !isInit || c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways {
			t.Errorf("pgsidecar must be an init container with restartPolicy Always (init=%v, restartPolicy=%v)", isInit, c.RestartPolicy)
		}
		image := strings.TrimPrefix(c.Image, sidecarImage)
		if image == "" || image == ":latest" {
			t.Errorf("image %q: pin a tag or digest", c.Image)
		}
	})

	t.Run("security context", func(t *testing.T) { checkSecurityContext(t, pod, c) })

	t.Run("DATABASE_URL from a Secret", func(t *testing.T) {
		i := slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "DATABASE_URL" })
		if i < 0 {
			t.Fatal("no DATABASE_URL in pgsidecar's environment")
		}
		e := c.Env[i]
		if e.Value != "" || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
			t.Fatalf("DATABASE_URL must come from a secretKeyRef, not %+v", e)
		}
		ref := e.ValueFrom.SecretKeyRef
		doc, err := os.ReadFile("kubernetes/secret.example.yaml")
		if err != nil {
			t.Fatal(err)
		}
		secret, ok := decode(t, "secret.example.yaml", doc).(*corev1.Secret)
		if !ok {
			t.Fatal("secret.example.yaml is not a Secret")
		}
		if _, ok := secret.StringData[ref.Key]; secret.Name != ref.Name || !ok {
			t.Errorf("secret.example.yaml (%s, keys %v) does not provide secretKeyRef %s/%s",
				secret.Name, slices.Sorted(maps.Keys(secret.StringData)), ref.Name, ref.Key)
		}
	})

	t.Run("configuration", func(t *testing.T) { checkConfig(t, pod, c) })

	t.Run("probes", func(t *testing.T) { checkProbes(t, c) })

	t.Run("termination grace period", func(t *testing.T) {
		// Kubernetes signals the native sidecar once the app containers have exited, within
		// the same period: the app's preStop comes first.
		var preStop time.Duration
		for _, app := range pod.Containers {
			if app.Lifecycle != nil && app.Lifecycle.PreStop != nil && app.Lifecycle.PreStop.Sleep != nil {
				preStop = max(preStop, time.Duration(app.Lifecycle.PreStop.Sleep.Seconds)*time.Second)
			}
		}
		grace := 30 * time.Second // Kubernetes' default
		if s := pod.TerminationGracePeriodSeconds; s != nil {
			grace = time.Duration(*s) * time.Second
		}
		// The sidecar's own settings, as the binary loads them from its environment.
		cfg := sidecarConfig(t, c)
		if need := preStop + cfg.ShutdownDelay + cfg.ShutdownTimeout; grace < need {
			t.Errorf("terminationGracePeriodSeconds %v < app preStop %v + shutdown_delay %v + shutdown_timeout %v",
				grace, preStop, cfg.ShutdownDelay, cfg.ShutdownTimeout)
		}
		if cfg.ShutdownDelay <= 0 {
			t.Errorf("shutdown_delay %v: endpoints would still route to a sidecar that no longer accepts", cfg.ShutdownDelay)
		}
	})
}

func checkSecurityContext(t *testing.T, pod *corev1.PodSpec, c *corev1.Container) {
	t.Helper()
	sc := c.SecurityContext
	if sc == nil {
		t.Fatal("pgsidecar has no securityContext")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("allowPrivilegeEscalation must be false")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("readOnlyRootFilesystem must be true")
	}
	if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
		t.Error("capabilities must drop ALL")
	}
	// The container's settings override the pod's.
	nonRoot, uid := sc.RunAsNonRoot, sc.RunAsUser
	if psc := pod.SecurityContext; psc != nil {
		if nonRoot == nil {
			nonRoot = psc.RunAsNonRoot
		}
		if uid == nil {
			uid = psc.RunAsUser
		}
	}
	if nonRoot == nil || !*nonRoot {
		t.Error("runAsNonRoot must be true")
	}
	if uid != nil && int(*uid) != dockerfileUID(t) {
		t.Errorf("runAsUser %d differs from the image's USER %d", *uid, dockerfileUID(t))
	}
}

// sidecarConfig loads pgsidecar's configuration from the container's environment and
// arguments as the binary would.
func sidecarConfig(t *testing.T, c *corev1.Container) *config.Config {
	t.Helper()
	// In a pod Kubernetes sets this, which selects the production profile.
	environ := []string{"KUBERNETES_SERVICE_HOST=10.0.0.1"}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			environ = append(environ, e.Name+"="+e.Value)
		case e.Name == "DATABASE_URL":
			environ = append(environ, "DATABASE_URL=postgres://app@db.example.invalid:5432/app")
		default:
			t.Errorf("env %s: only DATABASE_URL is expected from a reference", e.Name)
		}
	}
	cfg, err := config.Load(nil, append([]string{}, c.Args...), environ)
	if err != nil {
		t.Fatalf("the manifest's configuration does not load: %v", err)
	}
	return cfg
}

// checkConfig checks the sidecar's configuration, as the binary loads it, against the ports
// of the manifest and the binary's defaults.
func checkConfig(t *testing.T, pod *corev1.PodSpec, c *corev1.Container) {
	t.Helper()
	cfg := sidecarConfig(t, c)
	if cfg.Profile != config.ProfileProduction {
		t.Errorf("profile %q in a pod, want %s", cfg.Profile, config.ProfileProduction)
	}
	def := config.Defaults(cfg.Profile)

	// The health server: the container port named "health" is where it listens, on the
	// default port, and not only on loopback (the kubelet and Prometheus come over the pod IP).
	host, port := splitPort(t, cfg.HTTPListen)
	if _, defPort := splitPort(t, def.HTTPListen); port != defPort {
		t.Errorf("http_listen %s: port differs from the default %s", cfg.HTTPListen, def.HTTPListen)
	}
	if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
		t.Errorf("http_listen %s is loopback-only: probes and scrapes cannot reach it", cfg.HTTPListen)
	}
	if got := containerPort(t, c, "health"); got != port {
		t.Errorf("container port health = %d, but pgsidecar listens on %d", got, port)
	}

	// The client listener stays on loopback, on the default address, and the app's
	// DATABASE_URL points at it.
	if !slices.Equal(cfg.Listen, def.Listen) {
		t.Errorf("listen %v, want the default %v", cfg.Listen, def.Listen)
	}
	for _, app := range pod.Containers {
		for _, e := range app.Env {
			if e.Name == "DATABASE_URL" && !strings.Contains(e.Value, "@"+def.Listen[0]+"/") {
				t.Errorf("container %s: DATABASE_URL %q does not point at pgsidecar's %s", app.Name, e.Value, def.Listen[0])
			}
		}
	}
}

// checkProbes checks that each probe asks the health server the right question on its port.
func checkProbes(t *testing.T, c *corev1.Container) {
	t.Helper()
	hs := startHealthServer(t)
	for _, p := range []struct {
		kind  string
		probe *corev1.Probe
		path  string // what the health package serves for this question (README: HTTP endpoints)
	}{
		{"startupProbe", c.StartupProbe, "/startupz"},
		{"livenessProbe", c.LivenessProbe, "/livez"},
		{"readinessProbe", c.ReadinessProbe, "/readyz"},
	} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("%s: want an httpGet probe", p.kind)
			continue
		}
		get := p.probe.HTTPGet
		if get.Path != p.path {
			t.Errorf("%s path %q, want %q", p.kind, get.Path, p.path)
		}
		if code := httpStatus(t, hs+get.Path); code != http.StatusOK {
			t.Errorf("%s path %s: the health server answers %d", p.kind, get.Path, code)
		}
		if got, want := probePort(t, c, get.Port), containerPort(t, c, "health"); got != want {
			t.Errorf("%s port %s = %d, want the health port %d", p.kind, get.Port.String(), got, want)
		}
	}
}

func TestKustomizePodMonitorComponent(t *testing.T) {
	objs := render(t, "components/podmonitor")
	pm := only[*monitoringv1.PodMonitor](t, objs)
	dep := only[*appsv1.Deployment](t, objs)
	c, _ := sidecar(t, &dep.Spec.Template.Spec)

	podLabels := dep.Spec.Template.Labels
	for k, v := range pm.Spec.Selector.MatchLabels {
		if podLabels[k] != v {
			t.Errorf("PodMonitor selects %s=%s; the pod template has %q", k, v, podLabels[k])
		}
	}
	if len(pm.Spec.Selector.MatchExpressions) > 0 {
		t.Errorf("PodMonitor selector has matchExpressions, which this test does not check")
	}
	if len(pm.Spec.PodMetricsEndpoints) == 0 {
		t.Fatal("PodMonitor has no podMetricsEndpoints")
	}
	hs := startHealthServer(t)
	for _, ep := range pm.Spec.PodMetricsEndpoints {
		if ep.Port == nil {
			t.Errorf("endpoint %+v: want the named port health", ep)
		} else {
			containerPort(t, c, *ep.Port)
		}
		if code := httpStatus(t, hs+ep.Path); code != http.StatusOK {
			t.Errorf("scrape path %q: the health server answers %d", ep.Path, code)
		}
	}
}

// startHealthServer starts the binary's health server on a free port and returns its URL.
func startHealthServer(t *testing.T) string {
	t.Helper()
	hs := health.NewServer(health.Options{Addr: "127.0.0.1:0"})
	if err := hs.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = hs.Shutdown(ctx)
	})
	hs.SetStarted()
	return "http://" + hs.Addr().String()
}

func httpStatus(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// containerPort returns the number of the container's port with that name.
func containerPort(t *testing.T, c *corev1.Container, name string) int {
	t.Helper()
	for _, p := range c.Ports {
		if p.Name == name {
			return int(p.ContainerPort)
		}
	}
	t.Fatalf("container %s has no port named %q", c.Name, name)
	return 0
}

// probePort resolves a probe's port, given by name or number.
func probePort(t *testing.T, c *corev1.Container, p intstr.IntOrString) int {
	t.Helper()
	if p.Type == intstr.String {
		return containerPort(t, c, p.StrVal)
	}
	return p.IntValue()
}

func splitPort(t *testing.T, addr string) (string, int) {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(port)
	if err != nil {
		t.Fatal(err)
	}
	return host, n
}
