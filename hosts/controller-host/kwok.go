package main

import (
	"context"
	"fmt"
	"os"
	"slices"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"

	configv1alpha1 "sigs.k8s.io/kwok/pkg/apis/config/v1alpha1"
	"sigs.k8s.io/kwok/pkg/apis/internalversion"
	"sigs.k8s.io/kwok/pkg/apis/v1alpha1"
	"sigs.k8s.io/kwok/pkg/client/clientset/versioned"
	"sigs.k8s.io/kwok/pkg/config"
	"sigs.k8s.io/kwok/pkg/kwok/controllers"
	kwoklog "sigs.k8s.io/kwok/pkg/log"
	"sigs.k8s.io/kwok/pkg/utils/client"
	utilsslices "sigs.k8s.io/kwok/pkg/utils/slices"
)

// kwokSettings are the kwok-controller flags kwokctl gives a cluster's kwok-controller.
type kwokSettings struct {
	cluster    string // tags the cluster's log lines
	kubeconfig string // --kubeconfig
	configPath string // --config (the cluster's kwok.yaml: its stages and KwokConfiguration)
}

// runKwok runs kwok's controllers (nodes, their leases, pods, stages) for one cluster until ctx
// ends, wired from the configuration and stages as sigs.k8s.io/kwok/pkg/kwok/cmd's runE wires
// them, without its HTTP server (logs/exec/port-forward of fake pods, which nothing here uses).
func runKwok(ctx context.Context, s kwokSettings) error {
	// kwok logs every lease renewal and pod patch at info: noise at hundreds of clusters.
	level := kwoklog.LevelWarn
	if verboseLogs {
		level = kwoklog.LevelInfo
	}
	ctx = kwoklog.NewContext(ctx, kwoklog.NewLogger(os.Stderr, level).With("cluster", s.cluster))
	objs, err := config.Load(ctx, s.configPath)
	if err != nil {
		return fmt.Errorf("loading %s: %w", s.configPath, err)
	}
	opts := kwokOptions(objs)
	// What kwokctl turns into kwok-controller flags (BuildKwokControllerComponent for the binary
	// runtime): --manage-all-nodes=true, --node-name=localhost, and from its own configuration
	// --node-lease-duration-seconds and --enable-crds.
	opts.ManageAllNodes = true
	opts.NodeName = "localhost"
	if ctls := config.FilterWithType[*internalversion.KwokctlConfiguration](objs); len(ctls) != 0 {
		opts.NodeLeaseDurationSeconds = ctls[0].Options.NodeLeaseDurationSeconds
		opts.EnableCRDs = ctls[0].Options.EnableCRDs
	}
	for _, crd := range opts.EnableCRDs {
		if crd == v1alpha1.StageKind {
			return fmt.Errorf("%s: Stage CRDs are not supported by the controller host", s.configPath)
		}
	}
	groupStages := utilsslices.GroupBy(config.FilterWithType[*internalversion.Stage](objs),
		func(stage *internalversion.Stage) internalversion.StageResourceRef { return stage.Spec.ResourceRef })
	if len(groupStages) == 0 {
		return fmt.Errorf("%s holds no stages", s.configPath)
	}

	// kwok-controller takes a new identity (hostname_uuid) per process; a lease held by an
	// identity that is gone is not taken over while nothing changes it, so after a host restart
	// the nodes' leases would stop being renewed. One identity per cluster and machine lets the
	// restarted host renew the leases its predecessor held.
	hostname, err := os.Hostname()
	if err != nil {
		return fmt.Errorf("hostname: %w", err)
	}
	id := hostname + "_controller-host_" + s.cluster
	clientset, err := client.NewClientset("", s.kubeconfig)
	if err != nil {
		return err
	}
	restConfig, err := clientset.ToRESTConfig()
	if err != nil {
		return err
	}
	dynamicClient, err := clientset.ToDynamicClient()
	if err != nil {
		return err
	}
	restMapper, err := clientset.ToRESTMapper()
	if err != nil {
		return err
	}
	restClient, err := rest.RESTClientFor(restConfig)
	if err != nil {
		return err
	}
	typedClient, err := kubernetes.NewForConfig(restConfig)
	if err != nil {
		return err
	}
	typedKwokClient, err := versioned.NewForConfig(restConfig)
	if err != nil {
		return err
	}
	// runE waits for the apiserver before starting; here the caller retries with a backoff.
	if _, err := typedClient.Discovery().ServerVersion(); err != nil {
		return fmt.Errorf("apiserver not reachable: %w", err)
	}

	enableMetrics := len(config.FilterWithType[*internalversion.Metric](objs)) != 0 ||
		slices.Contains(opts.EnableCRDs, v1alpha1.MetricKind)
	ctr, err := controllers.NewController(controllers.Config{
		Clock:                                 clock.RealClock{},
		DynamicClient:                         dynamicClient,
		RESTClient:                            restClient,
		RESTMapper:                            restMapper,
		ImpersonatingDynamicClient:            clientset.ToImpersonatingDynamicClient(),
		ImpersonatingTypedClient:              clientset.ToImpersonatingTypedClient(),
		TypedClient:                           typedClient,
		TypedKwokClient:                       typedKwokClient,
		EnableMetrics:                         enableMetrics,
		EnablePodCache:                        enableMetrics,
		ManageAllNodes:                        opts.ManageAllNodes,
		DisregardStatusWithAnnotationSelector: opts.DisregardStatusWithAnnotationSelector,
		DisregardStatusWithLabelSelector:      opts.DisregardStatusWithLabelSelector,
		CIDR:                                  opts.CIDR,
		NodeIP:                                opts.NodeIP,
		NodeName:                              opts.NodeName,
		NodePort:                              opts.NodePort,
		PodPlayStageParallelism:               opts.PodPlayStageParallelism,
		NodePlayStageParallelism:              opts.NodePlayStageParallelism,
		LocalStages:                           groupStages,
		NodeLeaseParallelism:                  opts.NodeLeaseParallelism,
		NodeLeaseDurationSeconds:              opts.NodeLeaseDurationSeconds,
		ID:                                    id,
		PodsOnNodeSyncParallelism:             opts.PodsOnNodeSyncParallelism,
		EnablePodsOnNodeSyncListPager:         opts.EnablePodsOnNodeSyncListPager,
		EnablePodsOnNodeSyncStreamWatch:       opts.EnablePodsOnNodeSyncStreamWatch,
	})
	if err != nil {
		return err
	}
	if err := ctr.Start(ctx); err != nil {
		return err
	}
	<-ctx.Done()
	return ctx.Err()
}

// kwokOptions is the cluster's KwokConfiguration options, defaulted as kwok defaults them when
// the file has none (config.GetKwokConfiguration).
func kwokOptions(objs []config.InternalObject) internalversion.KwokConfigurationOptions {
	if confs := config.FilterWithType[*internalversion.KwokConfiguration](objs); len(confs) != 0 {
		return confs[0].Options
	}
	verConfig := &configv1alpha1.KwokConfiguration{}
	configv1alpha1.SetObjectDefaults_KwokConfiguration(verConfig)
	conf, err := internalversion.ConvertToInternalKwokConfiguration(verConfig)
	if err != nil {
		return internalversion.KwokConfigurationOptions{}
	}
	return conf.Options
}
