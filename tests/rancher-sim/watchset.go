package main

// The downstream watch set: the informers Rancher's user context holds open on every connected
// cluster (rancher/rancher v2.15.0, docs/rancher-fidelity.md lists the files read). Rancher starts
// them when the cluster's user controllers start and keeps them until the cluster disconnects or is
// deleted; each is one LIST and one long-lived WATCH on the downstream apiserver, which is most of
// the idle load Rancher puts on a cluster.

import (
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

const (
	watchSetRancher = "rancher"
	watchSetMinimal = "minimal"
	// stvAggregation is the Secret the real agent writes and Rancher's cavalidator watches alone.
	stvAggregationName = "stv-aggregation"
)

// watch is one informer of the set: the resource as Rancher names it, and how to build it.
type watch struct {
	name     string
	informer func(f *watchFactories) cache.SharedIndexInformer
}

// watchFactories are the shared informer factories one cluster's watch set draws from: Rancher
// builds one cluster-wide cache factory plus two dedicated ones, the impersonation factory
// (secrets and service accounts of cattle-impersonation-system only) and the cavalidator's (the
// stv-aggregation Secret only, by field selector), so that it never caches every Secret.
type watchFactories struct {
	cluster       informers.SharedInformerFactory
	impersonation informers.SharedInformerFactory
	cavalidator   informers.SharedInformerFactory
	// dynamic serves the kinds client-go's clientset lacks (APIServices).
	dynamic dynamicinformer.DynamicSharedInformerFactory
}

var apiServicesResource = schema.GroupVersionResource{Group: "apiregistration.k8s.io", Version: "v1", Resource: "apiservices"}

func newWatchFactories(client kubernetes.Interface, dyn dynamic.Interface) *watchFactories {
	selector := fields.AndSelectors(
		fields.OneTermEqualSelector("metadata.namespace", agentNamespace),
		fields.OneTermEqualSelector("metadata.name", stvAggregationName),
	).String()
	return &watchFactories{
		cluster:       informers.NewSharedInformerFactory(client, 0),
		impersonation: informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(impersonationNamespace)),
		cavalidator: informers.NewSharedInformerFactoryWithOptions(client, 0,
			informers.WithNamespace(agentNamespace),
			informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = selector })),
		dynamic: dynamicinformer.NewDynamicSharedInformerFactory(dyn, 0),
	}
}

func (f *watchFactories) start(stop <-chan struct{}) {
	f.cluster.Start(stop)
	f.impersonation.Start(stop)
	f.cavalidator.Start(stop)
	f.dynamic.Start(stop)
}

func (f *watchFactories) shutdown() {
	f.cluster.Shutdown()
	f.impersonation.Shutdown()
	f.cavalidator.Shutdown()
	f.dynamic.Shutdown()
}

// nodesWatch and namespacesWatch are in both sets: the simulator's own conditions (nodes seen,
// namespaces seen) come from them.
var (
	nodesWatch = watch{"nodes", func(f *watchFactories) cache.SharedIndexInformer {
		return f.cluster.Core().V1().Nodes().Informer()
	}}
	namespacesWatch = watch{"namespaces", func(f *watchFactories) cache.SharedIndexInformer {
		return f.cluster.Core().V1().Namespaces().Informer()
	}}
)

// rancherWatchSet is what Rancher v2.15.0 list+watches on an imported cluster with default
// settings (no project network policy, no project quotas, no authorized cluster endpoint, not a
// Windows cluster: those add pods, services, network policies, config maps when switched on).
var rancherWatchSet = []watch{
	// managementuser/controllers.go registerCaches, rbac/handler_base.go, nsserviceaccount,
	// secret/project_scoped_secrets.go: namespaces and the four RBAC kinds, cluster-wide.
	namespacesWatch,
	{"clusterroles", func(f *watchFactories) cache.SharedIndexInformer {
		return f.cluster.Rbac().V1().ClusterRoles().Informer()
	}},
	{"clusterrolebindings", func(f *watchFactories) cache.SharedIndexInformer {
		return f.cluster.Rbac().V1().ClusterRoleBindings().Informer()
	}},
	{"roles", func(f *watchFactories) cache.SharedIndexInformer {
		return f.cluster.Rbac().V1().Roles().Informer()
	}},
	{"rolebindings", func(f *watchFactories) cache.SharedIndexInformer {
		return f.cluster.Rbac().V1().RoleBindings().Informer()
	}},
	// rbac/handler_base.go: the namespace lifecycle's quota sync caches both, cluster-wide.
	{"resourcequotas", func(f *watchFactories) cache.SharedIndexInformer {
		return f.cluster.Core().V1().ResourceQuotas().Informer()
	}},
	{"limitranges", func(f *watchFactories) cache.SharedIndexInformer {
		return f.cluster.Core().V1().LimitRanges().Informer()
	}},
	// nodesyncer/nodessyncer.go: v3 Nodes mirror the downstream nodes.
	nodesWatch,
	// controllers.go: cluster.APIAggregation.APIServices("").Controller().
	{"apiservices", func(f *watchFactories) cache.SharedIndexInformer {
		return f.dynamic.ForResource(apiServicesResource).Informer()
	}},
	// impersonation/impersonation.go: the dedicated factory of cattle-impersonation-system.
	{"secrets/" + impersonationNamespace, func(f *watchFactories) cache.SharedIndexInformer {
		return f.impersonation.Core().V1().Secrets().Informer()
	}},
	{"serviceaccounts/" + impersonationNamespace, func(f *watchFactories) cache.SharedIndexInformer {
		return f.impersonation.Core().V1().ServiceAccounts().Informer()
	}},
	// cavalidator/cavalidator.go: one Secret by field selector.
	{"secrets/" + agentNamespace + "/" + stvAggregationName, func(f *watchFactories) cache.SharedIndexInformer {
		return f.cavalidator.Core().V1().Secrets().Informer()
	}},
}

// minimalWatchSet is the lighter probing of earlier rancher-sim versions, kept to compare against.
var minimalWatchSet = []watch{nodesWatch, namespacesWatch}

func watchSetFor(name string) ([]watch, error) {
	switch name {
	case watchSetRancher:
		return rancherWatchSet, nil
	case watchSetMinimal:
		return minimalWatchSet, nil
	}
	return nil, fmt.Errorf("--watch-set must be %s or %s, not %q", watchSetRancher, watchSetMinimal, name)
}
