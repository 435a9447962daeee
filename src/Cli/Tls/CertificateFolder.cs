using System.Security.Cryptography.X509Certificates;
using LiveMigration.Shared.Hosting;

namespace LiveMigration.Cli.Tls;

/// <summary>
/// A cluster's private CA and its nodes' certificates in one folder (0700, every file 0600): <c>ca.crt</c> and <c>ca.key</c>,
/// then <c>NODE.crt</c> and <c>NODE.key</c> per node, all PEM. <c>lsm local up</c> keeps one under DATA/tls, made on the
/// first up and reused by every later one (a node restarted next to running ones must present a certificate they
/// accept); <c>lsm tls ca</c> and <c>lsm tls issue</c> make one for a cluster of several machines.
/// </summary>
public sealed class CertificateFolder
{
    /// <summary>Under a local cluster's data directory.</summary>
    public const string LocalFolderName = "tls";
    public static readonly TimeSpan CaValidity = TimeSpan.FromDays(10 * 365);
    public static readonly TimeSpan NodeValidity = TimeSpan.FromDays(825);
    private static readonly TimeSpan RenewBefore = TimeSpan.FromDays(30);

    private readonly X509Certificate2 _authority;

    private CertificateFolder(string folder, X509Certificate2 authority)
    {
        Folder = folder;
        _authority = authority;
    }

    public string Folder { get; }
    public string CaFile => CaFileIn(Folder);
    public string CertificateFile(string node) => Path.Combine(Folder, $"{node}.crt");
    public string KeyFile(string node) => Path.Combine(Folder, $"{node}.key");
    public DateTime CaExpires => _authority.NotAfter;

    private static string CaFileIn(string folder) => Path.Combine(folder, "ca.crt");
    private static string CaKeyFileIn(string folder) => Path.Combine(folder, "ca.key");

    /// <summary>The folder's CA, made first (with the folder) when it has none: what <c>lsm local up</c> does.</summary>
    public static CertificateFolder OpenOrCreate(string folder, string caName)
    {
        folder = Path.GetFullPath(folder);
        return File.Exists(CaKeyFileIn(folder)) && File.Exists(CaFileIn(folder)) ? Open(folder) : Create(folder, caName);
    }

    /// <summary>A new CA in <paramref name="folder"/>; refused when the folder holds one already (a CA is never replaced by accident).</summary>
    public static CertificateFolder Create(string folder, string caName)
    {
        folder = Path.GetFullPath(folder);
        if (File.Exists(CaKeyFileIn(folder)) || File.Exists(CaFileIn(folder)))
            throw new ArgumentException($"{folder} holds a CA already ({CaFileIn(folder)}); for a new CA beside it (rotation) use another folder");
        ClusterCertificates.CreatePrivateFolder(folder);
        using var created = ClusterCertificates.CreateAuthority(caName, CaValidity);
        ClusterCertificates.WriteKey(created, CaKeyFileIn(folder));
        ClusterCertificates.WriteCertificate(created, CaFileIn(folder));
        return Open(folder);
    }

    /// <summary>The CA in <paramref name="folder"/>, which must hold one.</summary>
    public static CertificateFolder Open(string folder)
    {
        folder = Path.GetFullPath(folder);
        if (!File.Exists(CaFileIn(folder)) || !File.Exists(CaKeyFileIn(folder)))
            throw new ArgumentException($"{folder} holds no CA (ca.crt and ca.key); make one with lsm tls ca --dir {folder}");
        ClusterCertificates.CreatePrivateFolder(folder);
        try
        {
            return new CertificateFolder(folder, ClusterCertificates.ReadAuthority(CaFileIn(folder), CaKeyFileIn(folder)));
        }
        catch (System.Security.Cryptography.CryptographicException e)
        {
            throw new ArgumentException($"cannot read the CA in {folder} (ca.crt and ca.key, PEM): {e.Message}");
        }
    }

    /// <summary>A new certificate and key for <paramref name="node"/>, replacing any it had (renewal), naming the addresses it is reached at.</summary>
    public void Issue(string node, IEnumerable<string> addresses, TimeSpan validity)
    {
        if (node.Length is 0 or > 64 || !node.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '.' or '_') || node.StartsWith('.'))
            throw new ArgumentException($"node name '{node}' must be letters, digits, '-', '_' and '.' (it names its files), e.g. host-1");
        if (node == "ca")
            throw new ArgumentException("node name 'ca' is the CA's own files");
        using var issued = ClusterCertificates.IssueNode(_authority, node, addresses, validity);
        ClusterCertificates.WriteKey(issued, KeyFile(node));
        ClusterCertificates.WriteCertificate(issued, CertificateFile(node));
    }

    /// <summary>
    /// The node's TLS switches (<c>--tls-certificate</c>, <c>--tls-key</c>, <c>--tls-ca</c>), its certificate issued first
    /// when it has none that will do: missing, close to its expiry, or from another CA than <c>ca.crt</c>.
    /// </summary>
    public IReadOnlyList<string> ArgumentsFor(string node, string address)
    {
        if (!Usable(node)) Issue(node, [address], NodeValidity);
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
