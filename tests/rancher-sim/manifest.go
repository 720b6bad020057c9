package main

import (
	"bytes"
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

const (
	agentNamespace  = "cattle-system"
	agentName       = "cattle-cluster-agent"
	agentContainer  = "cluster-register"
	agentSA         = "cattle"
	credentialsBase = "cattle-credentials-"
)

func (s *sim) agentImage() string {
	return "rancher/rancher-agent:" + s.cfg.version.String()
}

// credentialsKey is the suffix of the cattle-credentials Secret: 2.9+ use the first 10 hex digits
// of sha256("<url>.<token>.<namespace>"), 2.8 the first 7 of md5(url+token+namespace).
func (s *sim) credentialsKey(token, namespace string) string {
	if s.cfg.version.atLeast(9) {
		sum := sha256.Sum256([]byte(s.cfg.serverURL + "." + token + "." + namespace))
		return hex.EncodeToString(sum[:])[:10]
	}
	sum := md5.Sum([]byte(s.cfg.serverURL + token + namespace))
	return hex.EncodeToString(sum[:])[:7]
}

// agentEnv is the cluster-register container's environment, in the order of Rancher's import
// template (pkg/systemtemplate/template.go), including the per-release variables and the agent
// settings Rancher appends (STRICT_VERIFY from agent-tls-mode).
func (s *sim) agentEnv(credentials, features string) []corev1.EnvVar {
	env := []corev1.EnvVar{}
	if features != "" {
		env = append(env, corev1.EnvVar{Name: "CATTLE_FEATURES", Value: features})
	}
	env = append(env,
		corev1.EnvVar{Name: "CATTLE_SERVER", Value: s.cfg.serverURL},
		corev1.EnvVar{Name: "CATTLE_CA_CHECKSUM", Value: s.ca.checksum()},
		corev1.EnvVar{Name: "CATTLE_CLUSTER", Value: "true"},
		corev1.EnvVar{Name: "CATTLE_K8S_MANAGED", Value: "true"},
		corev1.EnvVar{Name: "CATTLE_CLUSTER_REGISTRY", Value: ""},
		corev1.EnvVar{Name: "CATTLE_CREDENTIAL_NAME", Value: credentials},
	)
	if s.cfg.version.atLeast(12) {
		env = append(env, corev1.EnvVar{Name: "CATTLE_SUC_APP_NAME_OVERRIDE", Value: ""})
	} else {
		env = append(env, corev1.EnvVar{Name: "CATTLE_IS_RKE", Value: "false"})
	}
	strict := "false"
	if s.cfg.agentTLSMode == "strict" {
		strict = "true"
	}
	return append(env,
		corev1.EnvVar{Name: "CATTLE_INGRESS_IP_DOMAIN", Value: "sslip.io"},
		corev1.EnvVar{Name: "CATTLE_INSTALL_UUID", Value: s.installUUID()},
		corev1.EnvVar{Name: "CATTLE_SERVER_VERSION", Value: s.cfg.version.String()},
		corev1.EnvVar{Name: "STRICT_VERIFY", Value: strict},
	)
}

// installUUID is stable per state dir (derived from the CA) like Rancher's install-uuid setting.
func (s *sim) installUUID() string {
	sum := sha256.Sum256(s.ca.cert.Raw)
	h := hex.EncodeToString(sum[:16])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// manifestObjects builds the objects of Rancher's import manifest. namespace is "" for the import
// URL and the cluster id when Rancher renders it for its own apply (with features set).
func (s *sim) manifestObjects(token, namespace, features string) ([]*unstructured.Unstructured, error) {
	credentials := credentialsBase + s.credentialsKey(token, namespace)
	labels := map[string]string{"app": agentName}
	norman := map[string]string{"cattle.io/creator": "norman"}
	replicas := int32(1)
	maxUnavailable, maxSurge := intstr.FromInt32(0), intstr.FromInt32(1)
	secretMode := int32(0o500)

	objects := []runtime.Object{
		&rbacv1.ClusterRole{
			TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "ClusterRole"},
			ObjectMeta: metav1.ObjectMeta{Name: "proxy-clusterrole-kubeapiserver"},
			Rules: []rbacv1.PolicyRule{{
				APIGroups: []string{""},
				Resources: []string{"nodes/metrics", "nodes/proxy", "nodes/stats", "nodes/log", "nodes/spec"},
				Verbs:     []string{"get", "list", "watch", "create"},
			}},
		},
		&rbacv1.ClusterRoleBinding{
			TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "ClusterRoleBinding"},
			ObjectMeta: metav1.ObjectMeta{Name: "proxy-role-binding-kubernetes-master"},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "proxy-clusterrole-kubeapiserver"},
			Subjects:   []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "User", Name: "kube-apiserver"}},
		},
		&corev1.Namespace{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"},
			ObjectMeta: metav1.ObjectMeta{Name: agentNamespace},
		},
		&corev1.ServiceAccount{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"},
			ObjectMeta: metav1.ObjectMeta{Name: agentSA, Namespace: agentNamespace},
		},
		&rbacv1.ClusterRoleBinding{
			TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "ClusterRoleBinding"},
			ObjectMeta: metav1.ObjectMeta{Name: "cattle-admin-binding", Labels: norman},
			Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: agentSA, Namespace: agentNamespace}},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "cattle-admin"},
		},
		&corev1.Secret{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
			ObjectMeta: metav1.ObjectMeta{Name: credentials, Namespace: agentNamespace},
			Type:       corev1.SecretTypeOpaque,
			Data: map[string][]byte{
				"url": []byte(s.cfg.serverURL), "token": []byte(token), "namespace": []byte(namespace),
			},
		},
		&rbacv1.ClusterRole{
			TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "ClusterRole"},
			ObjectMeta: metav1.ObjectMeta{Name: "cattle-admin", Labels: norman},
			Rules: []rbacv1.PolicyRule{
				{APIGroups: []string{"*"}, Resources: []string{"*"}, Verbs: []string{"*"}},
				{NonResourceURLs: []string{"*"}, Verbs: []string{"*"}},
			},
		},
		&appsv1.Deployment{
			TypeMeta: metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
			ObjectMeta: metav1.ObjectMeta{
				Name: agentName, Namespace: agentNamespace,
				Annotations: map[string]string{"management.cattle.io/scale-available": "2"},
			},
			Spec: appsv1.DeploymentSpec{
				Replicas: &replicas,
				Selector: &metav1.LabelSelector{MatchLabels: labels},
				Strategy: appsv1.DeploymentStrategy{
					Type:          appsv1.RollingUpdateDeploymentStrategyType,
					RollingUpdate: &appsv1.RollingUpdateDeployment{MaxUnavailable: &maxUnavailable, MaxSurge: &maxSurge},
				},
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: labels},
					Spec: corev1.PodSpec{
						ServiceAccountName: agentSA,
						Tolerations: []corev1.Toleration{
							{Effect: corev1.TaintEffectNoSchedule, Key: "node-role.kubernetes.io/controlplane", Value: "true"},
							{Effect: corev1.TaintEffectNoSchedule, Key: "node-role.kubernetes.io/control-plane", Operator: corev1.TolerationOpExists},
						},
						Containers: []corev1.Container{{
							Name:            agentContainer,
							Image:           s.agentImage(),
							ImagePullPolicy: corev1.PullIfNotPresent,
							Env:             s.agentEnv(credentials, features),
							VolumeMounts:    []corev1.VolumeMount{{Name: "cattle-credentials", MountPath: "/cattle-credentials", ReadOnly: true}},
						}},
						Volumes: []corev1.Volume{{
							Name: "cattle-credentials",
							VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
								SecretName: credentials, DefaultMode: &secretMode,
							}},
						}},
					},
				},
			},
		},
		&corev1.Service{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
			ObjectMeta: metav1.ObjectMeta{Name: agentName, Namespace: agentNamespace},
			Spec: corev1.ServiceSpec{
				Selector: labels,
				Ports: []corev1.ServicePort{
					{Name: "http", Port: 80, TargetPort: intstr.FromInt32(80), Protocol: corev1.ProtocolTCP},
					{Name: "https-internal", Port: 443, TargetPort: intstr.FromInt32(444), Protocol: corev1.ProtocolTCP},
				},
			},
		},
	}
	out := make([]*unstructured.Unstructured, 0, len(objects))
	for _, obj := range objects {
		m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
		if err != nil {
			return nil, err
		}
		// Typed objects carry empty status and a null creationTimestamp; a manifest has neither.
		delete(m, "status")
		if meta, ok := m["metadata"].(map[string]any); ok {
			delete(meta, "creationTimestamp")
		}
		if spec, ok := m["spec"].(map[string]any); ok {
			if tmpl, ok := spec["template"].(map[string]any); ok {
				if meta, ok := tmpl["metadata"].(map[string]any); ok {
					delete(meta, "creationTimestamp")
				}
			}
		}
		out = append(out, &unstructured.Unstructured{Object: m})
	}
	return out, nil
}

// renderManifest is the manifest as YAML, the objects as one multi-document stream: the import
// YAML (no features) or what clusterdeploy applies (the cluster's features).
func (s *sim) renderManifest(token, namespace, features string) ([]byte, error) {
	objects, err := s.manifestObjects(token, namespace, features)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	for _, obj := range objects {
		doc, err := yaml.Marshal(obj.Object)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", obj.GetKind(), obj.GetName(), err)
		}
		buf.WriteString("---\n")
		buf.Write(doc)
	}
	return buf.Bytes(), nil
}

// clusterFeatures is CATTLE_FEATURES of the manifest Rancher applies itself (systemtemplate
// GetDesiredFeatures for an imported cluster), sorted as Rancher writes it.
func clusterFeatures() string {
	features := map[string]bool{
		"multi-cluster-management": false, "multi-cluster-management-agent": true, "fleet": false,
		"rke2": false, "provisioningv2": false, "embedded-cluster-api": false, "monitoringv1": false,
	}
	keys := make([]string, 0, len(features))
	for k := range features {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%t", k, features[k]))
	}
	return strings.Join(parts, ",")
}
