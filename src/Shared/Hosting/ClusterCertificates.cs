using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace LiveMigration.Shared.Hosting;

/// <summary>
/// Issues a cluster's private CA and its nodes' certificates (ECDSA P-256, .NET's own cryptography, no openssl), and
/// writes them as PEM files: what <c>lsm local up</c> and <c>lsm tls</c> make, and what <see cref="ClusterTls.Load"/> reads.
/// </summary>
public static class ClusterCertificates
{
    private static readonly Oid ServerAuthentication = new("1.3.6.1.5.5.7.3.1");
    private static readonly Oid ClientAuthentication = new("1.3.6.1.5.5.7.3.2");

    /// <summary>Private files (keys) and the folder holding them: their owner's only.</summary>
    public const UnixFileMode FileMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
    public const UnixFileMode FolderMode = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute;

    /// <summary>A self-signed CA certificate with its private key, allowed to sign node certificates only (path length 0).</summary>
    public static X509Certificate2 CreateAuthority(string name, TimeSpan validity)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest(new X500DistinguishedName($"CN={name}"), key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, true, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
        var now = DateTimeOffset.UtcNow;
        return request.CreateSelfSigned(now.AddMinutes(-5), now.Add(validity));
    }

    /// <summary>
    /// A node's certificate signed by <paramref name="authority"/>, for both ends of a connection (every member both
    /// connects and accepts), naming the node and the addresses it listens on; with its private key.
    /// </summary>
    public static X509Certificate2 IssueNode(X509Certificate2 authority, string nodeName, IEnumerable<string> hostnames, TimeSpan validity)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest(new X500DistinguishedName($"CN={nodeName}"), key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature | X509KeyUsageFlags.KeyAgreement, true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([ServerAuthentication, ClientAuthentication], false));
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
        request.CertificateExtensions.Add(X509AuthorityKeyIdentifierExtension.CreateFromCertificate(authority, true, false));
        var names = new SubjectAlternativeNameBuilder();
        names.AddDnsName(nodeName);
        foreach (var hostname in hostnames.Distinct())
        {
            if (IPAddress.TryParse(hostname, out var ip)) names.AddIpAddress(ip);
            else names.AddDnsName(hostname);
        }
        request.CertificateExtensions.Add(names.Build());
        var now = DateTimeOffset.UtcNow;
        var notAfter = now.Add(validity) < authority.NotAfter ? now.Add(validity) : new DateTimeOffset(authority.NotAfter.ToUniversalTime());
        var serial = RandomNumberGenerator.GetBytes(16);
        serial[0] &= 0x7f; // a positive serial number
        using var unsigned = request.Create(authority, now.AddMinutes(-5), notAfter, serial);
        return unsigned.CopyWithPrivateKey(key);
    }

    /// <summary>Reads a CA certificate and its private key written by <see cref="WriteCertificate"/> and <see cref="WriteKey"/>.</summary>
    public static X509Certificate2 ReadAuthority(string certificateFile, string keyFile)
    {
        var authority = X509Certificate2.CreateFromPemFile(certificateFile, keyFile);
        if (authority.Extensions.OfType<X509BasicConstraintsExtension>().FirstOrDefault() is not { CertificateAuthority: true })
            throw new ArgumentException($"{certificateFile} is not a CA certificate");
        return authority;
    }

    /// <summary>The certificate as PEM, created with its owner's permissions only (0600; written whole, then renamed in).</summary>
    public static void WriteCertificate(X509Certificate2 certificate, string path) =>
        WritePrivate(path, certificate.ExportCertificatePem() + "\n");

    /// <summary>The certificate's private key as unencrypted PKCS#8 PEM, 0600.</summary>
    public static void WriteKey(X509Certificate2 certificate, string path)
    {
        using var key = certificate.GetECDsaPrivateKey() ?? throw new ArgumentException($"{certificate.Subject} has no ECDSA private key");
        WritePrivate(path, key.ExportPkcs8PrivateKeyPem() + "\n");
    }

    /// <summary>Makes <paramref name="folder"/> (and sets it 0700 when this call made it or it is laxer).</summary>
    public static void CreatePrivateFolder(string folder)
    {
        Directory.CreateDirectory(folder);
        if (!OperatingSystem.IsWindows()) File.SetUnixFileMode(folder, FolderMode);
    }

    private static void WritePrivate(string path, string text)
    {
        var temporary = path + ".new";
        File.Delete(temporary);
        var options = new FileStreamOptions { Mode = System.IO.FileMode.CreateNew, Access = FileAccess.Write };
        if (!OperatingSystem.IsWindows()) options.UnixCreateMode = FileMode;
        using (var file = new StreamWriter(temporary, options))
        {
            file.Write(text);
            file.Flush();
            ((FileStream)file.BaseStream).Flush(flushToDisk: true);
        }
        File.Move(temporary, path, overwrite: true);
    }
}
