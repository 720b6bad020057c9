package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	cacheddiscovery "k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/cache"
	controllersmetrics "k8s.io/component-base/metrics/prometheus/controllers"
	genericcontrollermanager "k8s.io/controller-manager/app"
	"k8s.io/controller-manager/pkg/informerfactory"
	"k8s.io/kubernetes/cmd/kube-controller-manager/app/config"
	garbagecollector "k8s.io/kubernetes/pkg/controller/garbagecollector"

	v1core "k8s.io/client-go/kubernetes/typed/core/v1"
	certutil "k8s.io/client-go/util/cert"
	"k8s.io/client-go/util/keyutil"
	"k8s.io/controller-manager/pkg/clientbuilder"
	controllerhealthz "k8s.io/controller-manager/pkg/healthz"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/cmd/kube-controller-manager/app"
	"k8s.io/kubernetes/cmd/kube-controller-manager/app/options"
	"k8s.io/kubernetes/cmd/kube-controller-manager/names"
	serviceaccountcontroller "k8s.io/kubernetes/pkg/controller/serviceaccount"
	"k8s.io/kubernetes/pkg/serviceaccount"
)

// kcmSettings are the kube-controller-manager flags kwokctl gives a cluster's kcm (plus the lean
// profile's), as option fields.
type kcmSettings struct {
	cluster     string   // names this cluster's informers
	kubeconfig  string   // --kubeconfig
	rootCAFile  string   // --root-ca-file
	saKeyFile   string   // --service-account-private-key-file
	controllers []string // --controllers
}

// runKCM runs kube-controller-manager's controllers for one cluster until ctx ends, as
// app.Run does without leader election and without serving: the same options, controller
// context, controller constructors and run loop, called one level lower so that nothing
// process-global is registered twice. app.Run registers /configz under one fixed name (the
// second cluster fails) and serves on a port; app.CreateControllerContext reserves the informer
// name "kube-controller-manager" process-wide until its factory shuts down (the second cluster
// fails), so the context is built here as it builds it, with a name per cluster.
func runKCM(ctx context.Context, s kcmSettings) error {
	opts, err := options.NewKubeControllerManagerOptions()
	if err != nil {
		return fmt.Errorf("kube-controller-manager options: %w", err)
	}
	opts.Generic.ClientConnection.Kubeconfig = s.kubeconfig
	opts.SAController.RootCAFile = s.rootCAFile
	opts.SAController.ServiceAccountKeyFile = s.saKeyFile
	opts.Generic.Controllers = s.controllers
	opts.Generic.LeaderElection.LeaderElect = false
	opts.Generic.Debugging.EnableProfiling = false
	// No serving: a secure port per cluster is what the host exists to save, and nothing scrapes it.
	opts.SecureServing.BindPort = 0
	opts.SecureServing.Listener = nil

	cfg, err := opts.Config(ctx, app.KnownControllers(), app.ControllersDisabledByDefault(), app.ControllerAliases())
	if err != nil {
		return fmt.Errorf("kube-controller-manager config: %w", err)
	}
	c := cfg.Complete()

	c.EventBroadcaster.StartRecordingToSink(&v1core.EventSinkImpl{Interface: c.Client.CoreV1().Events("")})
	defer c.EventBroadcaster.Shutdown()

	// UseServiceAccountCredentials is off (kwokctl does not set it): every controller uses the
	// cluster's admin kubeconfig, as createClientBuilders does then.
	rootClientBuilder := clientbuilder.SimpleControllerClientBuilder{ClientConfig: c.Kubeconfig}
	controllerCtx, err := createControllerContext(ctx, c, rootClientBuilder, s.cluster)
	if err != nil {
		return fmt.Errorf("kube-controller-manager controller context: %w", err)
	}
	// Deferred at once: shutting the factory down also releases its informer name, which a retry
	// after a failure below needs again.
	defer controllerCtx.InformerFactory.Shutdown()

	descriptors := app.NewControllerDescriptors()
	// The token controller's descriptor in NewControllerDescriptors has no client builder (app.Run
	// replaces it with one built from an unexported constructor); it is built below instead.
	delete(descriptors, names.ServiceAccountTokenController)
	var controllers []app.Controller
	if enabled(s.controllers, names.ServiceAccountTokenController, "serviceaccount-token") {
		tokens, err := newTokensController(ctx, controllerCtx, rootClientBuilder)
		if err != nil {
			return err
		}
		controllers = append(controllers, tokens)
	}
	built, err := app.BuildControllers(ctx, controllerCtx, descriptors, nil, controllerhealthz.NewMutableHealthzHandler())
	if err != nil {
		return fmt.Errorf("kube-controller-manager controllers: %w", err)
	}
	controllers = append(controllers, built...)

	controllerCtx.InformerFactory.Start(ctx.Done())
	controllerCtx.ObjectOrMetadataInformerFactory.Start(ctx.Done())
	close(controllerCtx.InformersStarted)

	if !app.RunControllers(ctx, controllerCtx, controllers, app.ControllerStartJitter, c.ControllerShutdownTimeout) {
		return errors.New("kube-controller-manager controllers did not stop in time")
	}
	return ctx.Err()
}

// createControllerContext is app.CreateControllerContext with the shared informers named per
// cluster.
func createControllerContext(ctx context.Context, s *config.CompletedConfig, root clientbuilder.ControllerClientBuilder, cluster string) (app.ControllerContext, error) {
	// Informer transform to trim ManagedFields for memory efficiency, as upstream.
	trim := func(obj interface{}) (interface{}, error) {
		if accessor, err := meta.Accessor(obj); err == nil {
			if accessor.GetManagedFields() != nil {
				accessor.SetManagedFields(nil)
			}
		}
		return obj, nil
	}
	versionedClient, err := root.Client("shared-informers")
	if err != nil {
		return app.ControllerContext{}, fmt.Errorf("shared-informers client: %w", err)
	}
	informerName, err := cache.NewInformerName("kube-controller-manager/" + cluster)
	if err != nil {
		return app.ControllerContext{}, fmt.Errorf("informer name: %w", err)
	}
	sharedInformers := informers.NewSharedInformerFactoryWithOptions(versionedClient, app.ResyncPeriod(s)(),
		informers.WithTransform(trim), informers.WithInformerName(informerName))
	metadataConfig, err := root.Config("metadata-informers")
	if err != nil {
		informerName.Release()
		return app.ControllerContext{}, fmt.Errorf("metadata client config: %w", err)
	}
	metadataClient, err := metadata.NewForConfig(metadataConfig)
	if err != nil {
		informerName.Release()
		return app.ControllerContext{}, fmt.Errorf("metadata client: %w", err)
	}
	metadataInformers := metadatainformer.NewSharedInformerFactoryWithOptions(metadataClient, app.ResyncPeriod(s)(), metadatainformer.WithTransform(trim))
	if err := genericcontrollermanager.WaitForAPIServer(versionedClient, 10*time.Second); err != nil {
		informerName.Release()
		return app.ControllerContext{}, fmt.Errorf("failed to wait for apiserver being healthy: %w", err)
	}
	discoveryClient, err := root.DiscoveryClient("controller-discovery")
	if err != nil {
		informerName.Release()
		return app.ControllerContext{}, fmt.Errorf("discovery client: %w", err)
	}
	restMapper := restmapper.NewDeferredDiscoveryRESTMapper(cacheddiscovery.NewMemCacheClient(discoveryClient))
	go wait.Until(restMapper.Reset, 30*time.Second, ctx.Done())

	controllerCtx := app.ControllerContext{
		ClientBuilder:                   root,
		InformerFactory:                 sharedInformers,
		ObjectOrMetadataInformerFactory: informerfactory.NewInformerFactory(sharedInformers, metadataInformers),
		ComponentConfig:                 s.ComponentConfig,
		RESTMapper:                      restMapper,
		InformersStarted:                make(chan struct{}),
		ResyncPeriod:                    app.ResyncPeriod(s),
		ControllerManagerMetrics:        controllersmetrics.NewControllerManagerMetrics("kube-controller-manager"),
	}
	if controllerCtx.ComponentConfig.GarbageCollectorController.EnableGarbageCollector &&
		controllerCtx.IsControllerEnabled(app.NewControllerDescriptors()[names.GarbageCollectorController]) {
		ignored := make(map[schema.GroupResource]struct{})
		for _, r := range controllerCtx.ComponentConfig.GarbageCollectorController.GCIgnoredResources {
			ignored[schema.GroupResource{Group: r.Group, Resource: r.Resource}] = struct{}{}
		}
		controllerCtx.GraphBuilder = garbagecollector.NewDependencyGraphBuilder(ctx, metadataClient,
			controllerCtx.RESTMapper, ignored, controllerCtx.ObjectOrMetadataInformerFactory, controllerCtx.InformersStarted)
	}
	controllersmetrics.Register()
	return controllerCtx, nil
}

func enabled(list []string, names ...string) bool {
	for _, c := range list {
		for _, n := range names {
			if c == n || c == "*" {
				return true
			}
		}
	}
	return false
}

// tokensController is the service-account token controller as app's unexported
// newServiceAccountTokenController builds it: a legacy-issuer JWT signer over the cluster's
// service-account key, with the root CA from --root-ca-file.
type tokensController struct {
	ctrl    *serviceaccountcontroller.TokensController
	workers int
}

func (t *tokensController) Name() string { return names.ServiceAccountTokenController }

func (t *tokensController) Run(ctx context.Context) { t.ctrl.Run(ctx, t.workers) }

func newTokensController(ctx context.Context, cc app.ControllerContext, root clientbuilder.ControllerClientBuilder) (*tokensController, error) {
	conf := cc.ComponentConfig.SAController
	privateKey, err := keyutil.PrivateKeyFromFile(conf.ServiceAccountKeyFile)
	if err != nil {
		return nil, fmt.Errorf("reading the service-account key: %w", err)
	}
	rootCA, err := os.ReadFile(conf.RootCAFile)
	if err != nil {
		return nil, fmt.Errorf("reading the root CA: %w", err)
	}
	if _, err := certutil.ParseCertsPEM(rootCA); err != nil {
		return nil, fmt.Errorf("parsing the root CA %s: %w", conf.RootCAFile, err)
	}
	client, err := root.Client("tokens-controller")
	if err != nil {
		return nil, fmt.Errorf("tokens-controller client: %w", err)
	}
	generator, err := serviceaccount.JWTTokenGenerator(serviceaccount.LegacyIssuer, privateKey)
	if err != nil {
		return nil, fmt.Errorf("token generator: %w", err)
	}
	ctrl, err := serviceaccountcontroller.NewTokensController(
		klog.FromContext(ctx),
		cc.InformerFactory.Core().V1().ServiceAccounts(),
		cc.InformerFactory.Core().V1().Secrets(),
		client,
		serviceaccountcontroller.TokensControllerOptions{TokenGenerator: generator, RootCA: rootCA},
	)
	if err != nil {
		return nil, fmt.Errorf("tokens controller: %w", err)
	}
	return &tokensController{ctrl: ctrl, workers: int(conf.ConcurrentSATokenSyncs)}, nil
}
