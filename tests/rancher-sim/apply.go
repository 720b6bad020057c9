package main

// kubectl apply as Rancher's clusterdeploy runs it (pkg/kubectl/kubectl.go in rancher/rancher
// v2.15.0: `kubectl --kubeconfig <tmp> apply -f <tmp yaml>`), here in process with kubectl's own
// apply command (k8s.io/kubectl v0.36.1, the kubectl the toolchain pins), so the downstream
// apiserver sees the requests kubectl makes: discovery, the OpenAPI v3 documents it validates
// (fieldValidation=Strict support) and computes strategic merge patches with, then a GET per object
// and a create or a patch carrying the last-applied annotation.

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/kubectl/pkg/cmd/apply"
	cmdutil "k8s.io/kubectl/pkg/cmd/util"
)

// kubectlUserAgent is the User-Agent of the apply's requests: kubectl's, as the apiserver sees
// Rancher's kubectl.
const kubectlUserAgent = "kubectl/v1.36.1 (linux/amd64) kubernetes/rancher-sim"

// kubectlGetter is kubectl's view of its kubeconfig: one cluster, the given client configuration,
// namespace default. Discovery is cached in memory for one apply, where kubectl would use its
// disk cache (~/.kube/cache): a first apply fetches the same documents either way.
type kubectlGetter struct {
	config    *rest.Config
	discovery discovery.CachedDiscoveryInterface
}

func newKubectlGetter(config *rest.Config) (*kubectlGetter, error) {
	dc, err := discovery.NewDiscoveryClientForConfig(config)
	if err != nil {
		return nil, err
	}
	return &kubectlGetter{config: config, discovery: memory.NewMemCacheClient(dc)}, nil
}

func (g *kubectlGetter) ToRESTConfig() (*rest.Config, error) { return rest.CopyConfig(g.config), nil }

func (g *kubectlGetter) ToDiscoveryClient() (discovery.CachedDiscoveryInterface, error) {
	return g.discovery, nil
}

func (g *kubectlGetter) ToRESTMapper() (meta.RESTMapper, error) {
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(g.discovery)
	return restmapper.NewShortcutExpander(mapper, g.discovery, nil), nil
}

func (g *kubectlGetter) ToRawKubeConfigLoader() clientcmd.ClientConfig {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["default"] = &clientcmdapi.Cluster{Server: g.config.Host}
	cfg.Contexts["default"] = &clientcmdapi.Context{Cluster: "default", Namespace: "default"}
	cfg.CurrentContext = "default"
	return clientcmd.NewDefaultClientConfig(*cfg, &clientcmd.ConfigOverrides{})
}

// kubectlApply runs `kubectl apply -f <file>` with the manifest against config and returns
// kubectl's output ("namespace/cattle-system unchanged", ...). The manifest carries the
// registration token, so its file is private and removed afterwards.
func kubectlApply(ctx context.Context, config *rest.Config, manifest []byte) (string, error) {
	dir, err := os.MkdirTemp("", "rancher-sim-apply-")
	if err != nil {
		return "", err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	file := filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(file, manifest, 0o600); err != nil {
		return "", err
	}
	getter, err := newKubectlGetter(config)
	if err != nil {
		return "", err
	}
	var out bytes.Buffer
	streams := genericiooptions.IOStreams{In: bytes.NewReader(nil), Out: &out, ErrOut: &out}
	flags := apply.NewApplyFlags(streams)
	cmd := &cobra.Command{Use: "apply"}
	flags.AddFlags(cmd)
	if err := cmd.Flags().Set("filename", file); err != nil {
		return "", err
	}
	opts, err := flags.ToOptions(cmdutil.NewFactory(getter), cmd, "kubectl", nil)
	if err != nil {
		return "", err
	}
	if err := opts.Validate(); err != nil {
		return "", err
	}
	// kubectl's apply takes no context; each of its requests is bounded by the client timeout,
	// and a cancelled controller simply does not look at the result.
	done := make(chan error, 1)
	go func() { done <- opts.Run() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	output := strings.TrimSpace(out.String())
	if err != nil {
		return output, fmt.Errorf("%w: %s", err, output)
	}
	return output, nil
}
