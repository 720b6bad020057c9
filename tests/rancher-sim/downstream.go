package main

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
)

const (
	impersonationNamespace = "cattle-impersonation-system"
	secretRefAnnotation    = "rancher.io/service-account.secret-ref"
	saNameAnnotation       = "kubernetes.io/service-account.name"
	saNameLabel            = "cattle.io/service-account.name"
)

// downstream is Rancher's view of one cluster for one set of tunnel params: clients dialing
// through the main tunnel (TLS verified against caCert, bearer token) and the informers.
type downstream struct {
	params string
	config *rest.Config
	client kubernetes.Interface
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// adminBound is set once the global admin's binding is known to exist in the cluster.
	adminBound bool
}

func (d *downstream) stop() {
	d.cancel()
	d.wg.Wait()
}

// restConfig mirrors pkg/clustermanager/manager.go ToRESTConfig for an imported cluster: host
// https://<address>, CA from caCert only, the agent's token, HTTP/1.1, 45 s timeout, no rate
// limit, every dial through the tunnel session named after the cluster.
func (s *sim) restConfig(id, apiEndpoint, caCert, token string) (*rest.Config, error) {
	ca, err := base64.StdEncoding.DecodeString(caCert)
	if err != nil {
		return nil, fmt.Errorf("caCert is not base64: %w", err)
	}
	return &rest.Config{
		Host:            apiEndpoint,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAData: ca, NextProtos: []string{"http/1.1"}},
		Dial:            s.tunnel.Dialer(id),
		Timeout:         s.cfg.requestTimeout,
		QPS:             -1,
		UserAgent:       "rancher-sim",
	}, nil
}

// startDownstream builds the clients and starts the cluster's watch set (watchset.go).
func (c *clusterController) startDownstream(ctx context.Context, params, apiEndpoint, caCert, token string) (*downstream, error) {
	s := c.s
	config, err := s.restConfig(c.id, apiEndpoint, caCert, token)
	if err != nil {
		return nil, err
	}
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		return nil, err
	}
	// Rancher's caches are lasso clients (pkg/client/sharedclientfactory.go populateConfig): the
	// request timeout becomes a per-request context deadline and the HTTP client gets none, so a
	// watch lasts as long as its reflector asks (5-10 min), not 45 s, each followed by a new TLS
	// connection and watch.
	watchConfig := rest.CopyConfig(config)
	watchConfig.Timeout = 0
	dyn, err := dynamic.NewForConfig(watchConfig)
	if err != nil {
		return nil, err
	}
	// Rancher's user-context caches accept protobuf (pkg/types/config/context.go enableProtobuf),
	// which is cheaper for the apiserver to encode than JSON; its other clients speak JSON.
	cacheConfig := rest.CopyConfig(watchConfig)
	cacheConfig.AcceptContentTypes = "application/vnd.kubernetes.protobuf, application/json"
	cacheConfig.ContentType = "application/json"
	cacheClient, err := kubernetes.NewForConfig(cacheConfig)
	if err != nil {
		return nil, err
	}
	set, err := watchSetFor(s.cfg.watchSet)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	d := &downstream{params: params, config: config, client: client, cancel: cancel}

	s.mu.Lock()
	rt := s.stats(c.id)
	rt.InformersSynced = false
	rt.InformerStarts++
	rt.WatchSet = s.cfg.watchSet
	rt.Watches = 0
	rt.WatchesSynced = 0
	s.mu.Unlock()

	record := func(kind string) cache.ResourceEventHandlerFuncs {
		add := func(obj any) {
			meta, ok := obj.(metav1.Object)
			if !ok {
				return
			}
			s.mu.Lock()
			defer s.mu.Unlock()
			rt := s.stats(c.id)
			if kind == nodesWatch.name {
				rt.NodesSeen = addName(rt.NodesSeen, meta.GetName())
			} else {
				rt.NamespacesSeen = addName(rt.NamespacesSeen, meta.GetName())
			}
		}
		return cache.ResourceEventHandlerFuncs{AddFunc: add, UpdateFunc: func(_, obj any) { add(obj) }}
	}
	factories := newWatchFactories(cacheClient, dyn)
	synced := make([]cache.InformerSynced, 0, len(set))
	for _, w := range set {
		informer := w.informer(factories)
		name := w.name
		// A list or watch that fails is retried by the reflector with backoff, as in Rancher; the
		// error is kept so a resource the cluster does not serve shows up in the stats.
		if err := informer.SetWatchErrorHandler(func(_ *cache.Reflector, err error) {
			s.mu.Lock()
			defer s.mu.Unlock()
			rt := s.stats(c.id)
			rt.WatchErrors++
			rt.fail("watch %s: %v", name, err)
		}); err != nil {
			cancel()
			return nil, err
		}
		if name == nodesWatch.name || name == namespacesWatch.name {
			if _, err := informer.AddEventHandler(record(name)); err != nil {
				cancel()
				return nil, err
			}
		}
		synced = append(synced, informer.HasSynced)
	}
	factories.start(ctx.Done())
	s.mu.Lock()
	s.stats(c.id).Watches = len(set)
	s.mu.Unlock()
	for _, hasSynced := range synced {
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			if cache.WaitForCacheSync(ctx.Done(), hasSynced) {
				s.mu.Lock()
				// Not after the stop reset the count.
				if ctx.Err() == nil {
					s.stats(c.id).WatchesSynced++
				}
				s.mu.Unlock()
			}
		}()
	}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		// Rancher starts its user controllers once every cache of the set has synced.
		ok := cache.WaitForCacheSync(ctx.Done(), synced...)
		s.mu.Lock()
		s.stats(c.id).InformersSynced = ok
		s.kick(c.id)
		s.mu.Unlock()
	}()
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		<-ctx.Done()
		factories.shutdown()
		s.mu.Lock()
		rt := s.stats(c.id)
		rt.Watches = 0
		rt.WatchesSynced = 0
		s.mu.Unlock()
	}()
	return d, nil
}

func addName(names []string, name string) []string {
	for _, n := range names {
		if n == name {
			return names
		}
	}
	return append(names, name)
}

// downstreamPass runs health checks and, once the cluster qualifies, Rancher's impersonation
// setup and agent deployment, then sets Provisioned, Ready, Waiting and AgentDeployed.
func (c *clusterController) downstreamPass(ctx context.Context, connected bool) {
	s := c.s
	s.mu.Lock()
	rec := s.st.Clusters[c.id]
	if rec == nil {
		s.mu.Unlock()
		return
	}
	params := rec.APIEndpoint + "\x00" + rec.CACert + "\x00" + rec.SAToken
	apiEndpoint, caCert, token := rec.APIEndpoint, rec.CACert, rec.SAToken
	rt := s.stats(c.id)
	provisionedMsg := ""
	if rt.KubeVersion == "" || len(rt.NodesSeen) == 0 {
		provisionedMsg = "waiting for full cluster configuration"
	}
	rt.setCondition(condProvisioned, "True", "", provisionedMsg)
	s.mu.Unlock()

	if !s.tunnel.HasSession(c.id) {
		// Without the main session every dial fails ("cluster agent disconnected"); the informers
		// are dropped so a reconnect re-lists, as after Rancher restarts its controllers.
		if c.down != nil {
			c.down.stop()
			c.down = nil
		}
		c.setReady(false, "Disconnected", "cluster agent disconnected")
		return
	}
	if c.down != nil && c.down.params != params {
		c.down.stop()
		c.down = nil
	}
	if c.down == nil {
		d, err := c.startDownstream(ctx, params, apiEndpoint, caCert, token)
		if err != nil {
			c.recordError("starting downstream clients: %v", err)
			c.setReady(false, "Error", err.Error())
			return
		}
		c.down = d
	}
	if !connected {
		// Rancher skips health checks while Connected=False and marks the cluster Disconnected.
		c.setReady(false, "Disconnected", "Cluster agent is not connected")
		return
	}
	if err := c.healthCheck(ctx); err != nil {
		c.recordError("health check: %v", err)
		c.setReady(false, "Error", err.Error())
		return
	}
	c.setReady(true, "", "")

	s.mu.Lock()
	rt = s.stats(c.id)
	qualified := rt.InformersSynced && rt.KubeVersion != "" && len(rt.NodesSeen) > 0
	s.mu.Unlock()
	if !qualified {
		return
	}
	c.ensureGlobalAdminBinding(ctx)
	c.ensureAgentDeployed(ctx)
}

func (c *clusterController) setReady(ready bool, reason, message string) {
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	rt := s.stats(c.id)
	if ready {
		rt.everReady = true
		rt.setCondition(condReady, "True", "", "")
		rt.setCondition(condWaiting, "True", "", "")
		return
	}
	rt.setCondition(condReady, "False", reason, message)
	if !rt.everReady {
		rt.setCondition(condWaiting, "Unknown", "", "Waiting for API to be available")
	}
}

func (c *clusterController) recordError(format string, args ...any) {
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats(c.id).fail(format, args...)
}

// healthCheck is healthsyncer plus statsaggregator: /version, /readyz and the kube-system
// namespace (found or not found are both healthy).
func (c *clusterController) healthCheck(ctx context.Context) error {
	client := c.down.client
	version, err := client.Discovery().ServerVersion()
	if err == nil {
		_, err = client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err != nil {
			err = fmt.Errorf("/readyz: %w", err)
		}
	} else {
		err = fmt.Errorf("/version: %w", err)
	}
	if err == nil {
		_, err = client.CoreV1().Namespaces().Get(ctx, "kube-system", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			err = nil
		} else if err != nil {
			err = fmt.Errorf("kube-system namespace: %w", err)
		}
	}
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	rt := s.stats(c.id)
	if err != nil {
		rt.HealthFailed++
		return err
	}
	rt.HealthOK++
	rt.KubeVersion = version.GitVersion
	return nil
}

// ensureGlobalAdminBinding is the grbHandler of pkg/controllers/managementuser/rbac
// (globalrolebinding_handler.go): every global admin gets ClusterRoleBinding
// globaladmin-<user> to cluster-admin in each downstream cluster, which is what lets Steve on the
// agent serve the admin's impersonated requests. Done once per set of clients, as Rancher checks
// its cache rather than the cluster.
func (c *clusterController) ensureGlobalAdminBinding(ctx context.Context) {
	if c.down.adminBound {
		return
	}
	name := "globaladmin-" + adminUser
	_, err := c.down.client.RbacV1().ClusterRoleBindings().Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = c.down.client.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: map[string]string{
				"authz.cluster.cattle.io/globalrole":               "admin",
				"authz.cluster.cattle.io/globalrolebinding":        "globalrolebinding-sim01",
				"authz.cluster.cattle.io/admin-globalrole-checked": "true",
			}},
			Subjects: []rbacv1.Subject{{Kind: "User", Name: adminUser, APIGroup: rbacv1.GroupName}},
			RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "cluster-admin"},
		}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			err = nil
		}
	}
	if err != nil {
		c.recordError("global admin binding %s: %v", name, err)
		return
	}
	c.down.adminBound = true
}

// ensureAgentDeployed is clusterdeploy: the impersonation setup its first proxied request
// triggers, then the apply of the agent manifest, then (on every later pass) the check that the
// Deployment still carries the agent image, re-applying when it does not.
func (c *clusterController) ensureAgentDeployed(ctx context.Context) {
	s := c.s
	want := s.agentImage()
	deployment, err := c.down.client.AppsV1().Deployments(agentNamespace).Get(ctx, agentName, metav1.GetOptions{})
	s.mu.Lock()
	rt := s.stats(c.id)
	done := rt.ImpersonationOK && rt.conditionStatus(condAgentDeployed) == "True"
	s.mu.Unlock()
	if done && err == nil && containerImage(deployment.Spec.Template.Spec.Containers) == want {
		return
	}

	s.mu.Lock()
	if rt.conditionStatus(condAgentDeployed) != "True" {
		rt.setCondition(condAgentDeployed, "Unknown", "", "deploying the cluster agent")
	}
	s.mu.Unlock()

	if err := c.impersonationSetup(ctx); err != nil {
		c.deployFailed("impersonation setup: %v", err)
		return
	}
	if err := c.applyManifest(ctx); err != nil {
		c.deployFailed("applying the agent manifest: %v", err)
		return
	}
	deployment, err = c.down.client.AppsV1().Deployments(agentNamespace).Get(ctx, agentName, metav1.GetOptions{})
	if err != nil {
		c.deployFailed("reading back the agent deployment: %v", err)
		return
	}
	image := containerImage(deployment.Spec.Template.Spec.Containers)
	if image != want {
		c.deployFailed("agent deployment has image %q, want %q", image, want)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	rt = s.stats(c.id)
	rt.AgentDeployed = true
	rt.AgentImage = image
	rt.setCondition(condAgentDeployed, "True", "", "")
}

func (c *clusterController) deployFailed(format string, args ...any) {
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	rt := s.stats(c.id)
	rt.fail(format, args...)
	rt.setCondition(condAgentDeployed, "False", "Error", rt.LastError)
}

func containerImage(containers []corev1.Container) string {
	for _, ctr := range containers {
		if ctr.Name == agentContainer {
			return ctr.Image
		}
	}
	return ""
}

// impersonationUser is the id of the Rancher user whose impersonation account is set up; stable
// per cluster so a restarted simulator reuses the objects it created before.
func impersonationUser(clusterID string) string {
	sum := sha256.Sum256([]byte(clusterID))
	return "u-" + hex.EncodeToString(sum[:])[:10]
}

// impersonationSetup follows pkg/impersonation/impersonation.go: namespace, ClusterRole,
// ServiceAccount and ClusterRoleBinding cattle-impersonation-<user>, then a generateName
// service-account-token Secret referenced from the SA, whose data.token the cluster must fill. The
// token is then used once (a SelfSubjectReview) to prove the cluster accepts it.
func (c *clusterController) impersonationSetup(ctx context.Context) error {
	client := c.down.client
	user := impersonationUser(c.id)
	name := "cattle-impersonation-" + user
	create := func(err error) error {
		if apierrors.IsAlreadyExists(err) {
			return nil
		}
		return err
	}
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{Name: impersonationNamespace},
	}, metav1.CreateOptions{}); create(err) != nil {
		return fmt.Errorf("namespace: %w", err)
	}
	if _, err := client.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Rules: []rbacv1.PolicyRule{{
			APIGroups: []string{""}, Resources: []string{"users"}, Verbs: []string{"impersonate"}, ResourceNames: []string{user},
		}},
	}, metav1.CreateOptions{}); create(err) != nil {
		return fmt.Errorf("cluster role: %w", err)
	}
	if _, err := client.CoreV1().ServiceAccounts(impersonationNamespace).Create(ctx, &corev1.ServiceAccount{
		ObjectMeta: metav1.ObjectMeta{Name: name},
	}, metav1.CreateOptions{}); create(err) != nil {
		return fmt.Errorf("service account: %w", err)
	}
	if _, err := client.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: name, Namespace: impersonationNamespace}},
	}, metav1.CreateOptions{}); create(err) != nil {
		return fmt.Errorf("cluster role binding: %w", err)
	}
	secretName, err := c.impersonationSecret(ctx, name)
	if err != nil {
		return err
	}
	token, err := c.waitForToken(ctx, secretName)
	if err != nil {
		return err
	}
	return c.verifyToken(ctx, name, token)
}

// impersonationSecret returns the SA's token Secret, creating it (and the SA's reference to it)
// when the SA does not point at one that still exists.
func (c *clusterController) impersonationSecret(ctx context.Context, sa string) (string, error) {
	client := c.down.client
	account, err := client.CoreV1().ServiceAccounts(impersonationNamespace).Get(ctx, sa, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("service account: %w", err)
	}
	if ns, name, ok := strings.Cut(account.Annotations[secretRefAnnotation], "/"); ok && ns == impersonationNamespace {
		if _, err := client.CoreV1().Secrets(impersonationNamespace).Get(ctx, name, metav1.GetOptions{}); err == nil {
			return name, nil
		}
	}
	secret, err := client.CoreV1().Secrets(impersonationNamespace).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: sa + "-token-",
			Annotations:  map[string]string{saNameAnnotation: sa},
			Labels:       map[string]string{saNameLabel: sa},
		},
		Type: corev1.SecretTypeServiceAccountToken,
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token secret: %w", err)
	}
	if account.Annotations == nil {
		account.Annotations = map[string]string{}
	}
	account.Annotations[secretRefAnnotation] = impersonationNamespace + "/" + secret.Name
	if _, err := client.CoreV1().ServiceAccounts(impersonationNamespace).Update(ctx, account, metav1.UpdateOptions{}); err != nil {
		return "", fmt.Errorf("service account secret reference: %w", err)
	}
	return secret.Name, nil
}

// waitForToken polls until kube-controller-manager's token controller filled data.token.
func (c *clusterController) waitForToken(ctx context.Context, secret string) (string, error) {
	deadline := time.Now().Add(c.s.cfg.tokenWait)
	for {
		got, err := c.down.client.CoreV1().Secrets(impersonationNamespace).Get(ctx, secret, metav1.GetOptions{})
		if err == nil && len(got.Data["token"]) > 0 {
			return string(got.Data["token"]), nil
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = errors.New("data.token still empty")
			}
			return "", fmt.Errorf("secret %s/%s: no token after %s: %w", impersonationNamespace, secret, c.s.cfg.tokenWait, err)
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func (c *clusterController) verifyToken(ctx context.Context, sa, token string) error {
	config := rest.CopyConfig(c.down.config)
	config.BearerToken = token
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		return err
	}
	review, err := client.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("authenticating with the impersonation token: %w", err)
	}
	want := "system:serviceaccount:" + impersonationNamespace + ":" + sa
	if got := review.Status.UserInfo.Username; got != want {
		return fmt.Errorf("impersonation token authenticates as %q, want %q", got, want)
	}
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	rt := s.stats(c.id)
	rt.ImpersonationOK = true
	rt.ImpersonationSA = impersonationNamespace + "/" + sa
	return nil
}

// applyManifest applies the manifest Rancher renders for its own deploy (namespace = cluster id,
// the "system" registration token, the cluster's features) with kubectl apply, as clusterdeploy
// does (apply.go).
func (c *clusterController) applyManifest(ctx context.Context) error {
	s := c.s
	s.mu.Lock()
	system, ok := s.st.Tokens[c.id+":system"]
	if !ok {
		system = s.addToken(c.id, "system", time.Now())
		system.IssuedAt = system.Created
		if err := s.st.save(); err != nil {
			s.mu.Unlock()
			return err
		}
	}
	token := system.Token
	s.mu.Unlock()

	manifest, err := s.renderManifest(token, c.id, clusterFeatures())
	if err != nil {
		return err
	}
	config := rest.CopyConfig(c.down.config)
	config.UserAgent = kubectlUserAgent
	output, err := kubectlApply(ctx, config, manifest)
	if err != nil {
		return fmt.Errorf("kubectl apply: %w", err)
	}
	s.mu.Lock()
	rt := s.stats(c.id)
	rt.LastApplyOutput = output
	rt.ManifestApplies++
	s.mu.Unlock()
	return nil
}
