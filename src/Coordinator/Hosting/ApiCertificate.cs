using System.Security.Cryptography.X509Certificates;
using LiveMigration.Shared.Hosting;

namespace LiveMigration.Coordinator.Hosting;

/// <summary>
/// The certificate the API serves HTTPS with (<c>--api-certificate</c>, PEM, and its key, <c>--api-key</c>): read and
/// checked when the Coordinator starts, so a certificate no client could accept stops it with the reason instead of
/// failing every handshake later.
/// </summary>
public static class ApiCertificate
{
    private static readonly string ServerAuthentication = "1.3.6.1.5.5.7.3.1";

    /// <param name="keyFile">The private key's PEM file, or null when it is in <paramref name="certificateFile"/>.</param>
    public static X509Certificate2 Load(string certificateFile, string? keyFile)
    {
        var keyPath = keyFile ?? certificateFile;
        foreach (var file in new[] { certificateFile, keyPath }.Distinct())
            if (!File.Exists(file)) throw new ArgumentException($"the API certificate file {file} does not exist");
        if (!OperatingSystem.IsWindows() && (File.GetUnixFileMode(keyPath) & OwnerOnly.OthersOrGroup) != 0)
            throw new ArgumentException($"the API's private key {keyPath} is readable by other users: make it its owner's only (chmod 600 {keyPath})");
        X509Certificate2 certificate;
        try
        {
            certificate = X509Certificate2.CreateFromPemFile(certificateFile, keyFile);
        }
        catch (Exception e) when (e is System.Security.Cryptography.CryptographicException or ArgumentException)
        {
            throw new ArgumentException($"cannot read the API certificate and its private key from {string.Join(" and ", new[] { certificateFile, keyPath }.Distinct())} " +
                                        $"(PEM, the key unencrypted): {e.Message}");
        }
        if (!certificate.HasPrivateKey)
            throw new ArgumentException($"the API certificate {certificate.Subject} comes without its private key (--api-key FILE)");
        if (certificate.Extensions.OfType<X509BasicConstraintsExtension>().FirstOrDefault() is { CertificateAuthority: true })
            throw new ArgumentException($"{certificateFile} holds a CA certificate ({certificate.Subject}): the API serves a certificate issued by a CA, " +
                                        "e.g. lsm tls issue coordinator-api --dir DIR --address HOST");
        if (certificate.Extensions.OfType<X509EnhancedKeyUsageExtension>().FirstOrDefault() is { } usages
            && !usages.EnhancedKeyUsages.Cast<System.Security.Cryptography.Oid>().Any(u => u.Value == ServerAuthentication))
            throw new ArgumentException($"the API certificate {certificate.Subject} is not for servers (its extended key usage lacks serverAuth)");
        var now = DateTime.Now;
        if (now < certificate.NotBefore || now > certificate.NotAfter)
            throw new ArgumentException($"the API certificate {certificate.Subject} is valid from {certificate.NotBefore:u} to {certificate.NotAfter:u}, not now");
        return certificate;
    }
}
