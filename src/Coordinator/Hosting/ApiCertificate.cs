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
        var certificate = CertificateChain.ReadWithKey(certificateFile, keyFile, "the API certificate");
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
