using System.Security.Cryptography.X509Certificates;
using LiveMigration.Shared.Hosting;

namespace LiveMigration.Cli.Local;

/// <summary>
/// A local cluster's private CA and its nodes' certificates under DATA/tls (folder 0700, every file 0600): made on the
/// first <c>lsm local up</c>, reused by every later one (a node restarted next to running ones must present a
/// certificate they accept), left by <c>lsm local down</c>. A node's certificate is issued again only when it is
/// missing, close to its expiry, or from another CA than <c>ca.crt</c> (after the CA files were replaced).
/// </summary>
public sealed class LocalClusterTls
{
    public const string FolderName = "tls";
    private static readonly TimeSpan CaValidity = TimeSpan.FromDays(10 * 365);
    private static readonly TimeSpan NodeValidity = TimeSpan.FromDays(825);
    private static readonly TimeSpan RenewBefore = TimeSpan.FromDays(30);

    private readonly X509Certificate2 _authority;

    private LocalClusterTls(string folder, X509Certificate2 authority)
    {
        Folder = folder;
        _authority = authority;
    }

    public string Folder { get; }
    public string CaFile => Path.Combine(Folder, "ca.crt");
    public string CertificateFile(string node) => Path.Combine(Folder, $"{node}.crt");
    public string KeyFile(string node) => Path.Combine(Folder, $"{node}.key");

    /// <summary>DATA/tls with its CA, made when missing.</summary>
    public static LocalClusterTls Open(string dataDirectory)
    {
        var folder = Path.Combine(Path.GetFullPath(dataDirectory), FolderName);
        ClusterCertificates.CreatePrivateFolder(folder);
        var (caFile, caKeyFile) = (Path.Combine(folder, "ca.crt"), Path.Combine(folder, "ca.key"));
        if (!File.Exists(caFile) || !File.Exists(caKeyFile))
        {
            using var created = ClusterCertificates.CreateAuthority($"lsm local cluster CA ({Environment.MachineName}:{folder})", CaValidity);
            ClusterCertificates.WriteKey(created, caKeyFile);
            ClusterCertificates.WriteCertificate(created, caFile);
        }
        return new LocalClusterTls(folder, ClusterCertificates.ReadAuthority(caFile, caKeyFile));
    }

    /// <summary>
    /// The node's TLS switches (<c>--tls-certificate</c>, <c>--tls-key</c>, <c>--tls-ca</c>), its certificate issued first
    /// when it has none that will do.
    /// </summary>
    public IReadOnlyList<string> ArgumentsFor(string node, string hostname)
    {
        if (!Usable(node))
        {
            using var issued = ClusterCertificates.IssueNode(_authority, node, [hostname], NodeValidity);
            ClusterCertificates.WriteKey(issued, KeyFile(node));
            ClusterCertificates.WriteCertificate(issued, CertificateFile(node));
        }
        return ["--tls-certificate", CertificateFile(node), "--tls-key", KeyFile(node), "--tls-ca", CaFile];
    }

    private bool Usable(string node)
    {
        if (!File.Exists(CertificateFile(node)) || !File.Exists(KeyFile(node))) return false;
        try
        {
            using var certificate = X509Certificate2.CreateFromPemFile(CertificateFile(node), KeyFile(node));
            _ = new ClusterTls(certificate, [_authority]); // refuses a certificate this CA did not issue
            return certificate.NotAfter.ToUniversalTime() - DateTime.UtcNow > RenewBefore;
        }
        catch (Exception e) when (e is System.Security.Cryptography.CryptographicException or ArgumentException)
        {
            return false;
        }
    }
}
