using System.Security.Cryptography.X509Certificates;
using LiveMigration.Shared.Hosting;
using Microsoft.Extensions.Configuration;

namespace LiveMigration.Shared.Tests.Hosting;

/// <summary>
/// The configuration of the cluster's mutual TLS (issue 13): which certificates a node accepts from a peer, how the
/// files are read, and that a node never runs unauthenticated off loopback by accident. The handshake itself is proven
/// with real ActorSystems in <c>RemotingTlsSpecs</c>.
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class ClusterTlsTests : IDisposable
{
    private static readonly TimeSpan Day = TimeSpan.FromDays(1);
    private readonly string _folder = Directory.CreateTempSubdirectory("lsm-tls-").FullName;
    private readonly X509Certificate2 _ca = ClusterCertificates.CreateAuthority("cluster CA", Day);

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    private static IConfiguration Config(params (string Key, string Value)[] pairs) =>
        new ConfigurationBuilder().AddInMemoryCollection(pairs.Select(p => new KeyValuePair<string, string?>(p.Key, p.Value))).Build();

    /// <summary>The node's certificate, key and a CA bundle of <paramref name="authorities"/> written as lsm writes them.</summary>
    private (string Certificate, string Key, string Ca) WriteFiles(X509Certificate2 issuer, params X509Certificate2[] authorities)
    {
        var node = ClusterCertificates.IssueNode(issuer, "host-1", ["127.0.0.1"], Day);
        var (certificate, key, ca) = (Path.Combine(_folder, "node.crt"), Path.Combine(_folder, "node.key"), Path.Combine(_folder, "ca.crt"));
        ClusterCertificates.WriteCertificate(node, certificate);
        ClusterCertificates.WriteKey(node, key);
        File.WriteAllText(ca, string.Concat((authorities.Length > 0 ? authorities : [issuer]).Select(a => a.ExportCertificatePem() + "\n")));
        return (certificate, key, ca);
    }

    [Fact]
    public void Plain_remoting_beyond_loopback_is_refused_unless_the_operator_says_insecure()
    {
        var error = Assert.Throws<ArgumentException>(() => ClusterNodeSettings.FromConfiguration(Config(("Cluster:Hostname", "10.0.0.5")), "host"));
        Assert.Contains("without TLS is refused", error.Message);
        Assert.Contains("--insecure-remoting", error.Message);

        var insecure = ClusterNodeSettings.FromConfiguration(Config(("Cluster:Hostname", "10.0.0.5"), ("Cluster:InsecureRemoting", "true")), "host");
        Assert.Null(insecure.Tls);
        Assert.True(insecure.InsecureRemoting);
        Assert.Null(ClusterNodeSettings.FromConfiguration(Config(("Cluster:Hostname", "127.0.0.1")), "host").Tls);
    }

    [Fact]
    public void The_bare_insecure_remoting_flag_does_not_swallow_the_next_switch()
    {
        var config = new ConfigurationBuilder()
            .AddCommandLine(ClusterNodeSettings.ExpandFlags(["--insecure-remoting", "--hostname", "10.0.0.5"]), ClusterNodeSettings.Switches.ToDictionary())
            .Build();

        var settings = ClusterNodeSettings.FromConfiguration(config, "host");

        Assert.True(settings.InsecureRemoting);
        Assert.Equal("10.0.0.5", settings.Hostname);
    }

    [Fact]
    public void A_TLS_node_reads_its_files_and_takes_only_akka_ssl_tcp_seeds()
    {
        var (certificate, key, ca) = WriteFiles(_ca);
        (string, string)[] tls = [("Cluster:Tls:Certificate", certificate), ("Cluster:Tls:Key", key), ("Cluster:Tls:Ca", ca), ("Cluster:Hostname", "10.0.0.5")];

        var settings = ClusterNodeSettings.FromConfiguration(Config([.. tls, ("Cluster:Seeds", "akka.ssl.tcp://lsm@10.0.0.4:4053")]), "host");
        Assert.Equal("CN=host-1", settings.Tls!.Certificate.Subject);

        var plainSeed = Assert.Throws<ArgumentException>(() => ClusterNodeSettings.FromConfiguration(Config([.. tls, ("Cluster:Seeds", "akka.tcp://lsm@10.0.0.4:4053")]), "host"));
        Assert.Contains("akka.ssl.tcp://", plainSeed.Message);
        var tlsSeedOnPlainNode = Assert.Throws<ArgumentException>(() => ClusterNodeSettings.FromConfiguration(Config(("Cluster:Seeds", "akka.ssl.tcp://lsm@127.0.0.1:4053")), "host"));
        Assert.Contains("--tls-certificate", tlsSeedOnPlainNode.Message);
    }

    [Fact]
    public void Half_a_TLS_configuration_a_key_others_can_read_and_a_certificate_of_another_CA_are_refused_with_the_reason()
    {
        var (certificate, key, ca) = WriteFiles(_ca);

        var half = Assert.Throws<ArgumentException>(() => ClusterNodeSettings.FromConfiguration(Config(("Cluster:Tls:Certificate", certificate)), "host"));
        Assert.Contains("--tls-ca", half.Message);

        File.SetUnixFileMode(key, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead);
        var readable = Assert.Throws<ArgumentException>(() => ClusterTls.Load(certificate, key, ca));
        Assert.Contains("chmod 600", readable.Message);
        File.SetUnixFileMode(key, ClusterCertificates.FileMode);

        var stranger = ClusterCertificates.CreateAuthority("another CA", Day);
        File.WriteAllText(ca, stranger.ExportCertificatePem());
        var foreign = Assert.Throws<ArgumentException>(() => ClusterTls.Load(certificate, key, ca));
        Assert.Contains("not accepted by the cluster CA bundle", foreign.Message);
    }

    [Fact]
    public void Peers_from_every_CA_of_the_bundle_are_accepted_and_no_one_else()
    {
        // rotation: the bundle holds the old CA and the new one while the nodes move from one to the other
        var newCa = ClusterCertificates.CreateAuthority("cluster CA 2", Day);
        var (certificate, key, ca) = WriteFiles(_ca, _ca, newCa);
        var tls = ClusterTls.Load(certificate, key, ca);

        Assert.Null(tls.RefusalReason(ClusterCertificates.IssueNode(_ca, "host-2", ["127.0.0.1"], Day)));
        Assert.Null(tls.RefusalReason(ClusterCertificates.IssueNode(newCa, "host-3", ["127.0.0.1"], Day)));

        var stranger = ClusterCertificates.IssueNode(ClusterCertificates.CreateAuthority("cluster CA", Day), "host-9", ["127.0.0.1"], Day);
        Assert.Contains("does not chain to the cluster CA", tls.RefusalReason(stranger));
        Assert.Contains("no certificate", tls.RefusalReason(null));
        // the CA's own certificate is no node's, even to whoever holds only its public part
        Assert.Contains("is a CA certificate", tls.RefusalReason(_ca));
    }

    [Fact]
    public void Files_are_written_for_their_owner_only()
    {
        var (certificate, key, _) = WriteFiles(_ca);

        Assert.Equal(ClusterCertificates.FileMode, File.GetUnixFileMode(certificate));
        Assert.Equal(ClusterCertificates.FileMode, File.GetUnixFileMode(key));
        Assert.StartsWith("-----BEGIN PRIVATE KEY-----", File.ReadAllText(key));
    }
}
