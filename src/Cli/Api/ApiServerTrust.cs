using System.Net.Security;
using System.Security.Cryptography.X509Certificates;
using LiveMigration.Shared.Hosting;

namespace LiveMigration.Cli.Api;

/// <summary>
/// Which certificates <c>lsm</c> accepts from an https:// API. With <c>--ca-file</c> (or LSM_CA_FILE) only those issued
/// by that file's CAs, for the name lsm dialled (the cluster's private CA is in no system store, and a certificate some
/// public CA issued must not pass for the Coordinator); without it, the machine's system store, as any HTTPS client.
/// </summary>
public sealed class ApiServerTrust
{
    private readonly X509Certificate2Collection? _authorities;
    private readonly string? _caFile;

    private ApiServerTrust(X509Certificate2Collection? authorities, string? caFile)
    {
        _authorities = authorities;
        _caFile = caFile;
    }

    public static ApiServerTrust SystemStore { get; } = new(null, null);

    /// <summary>Only the CAs in <paramref name="caFile"/> (PEM); an <see cref="ArgumentException"/> naming the file when it holds no CA.</summary>
    public static ApiServerTrust Authorities(string caFile) =>
        new(CertificateChain.ReadAuthorities(caFile, "the CA file"), caFile);

    /// <summary>Why the last certificate was refused, for the message that follows the failed handshake.</summary>
    public string? LastRefusal { get; private set; }

    public bool Accept(X509Certificate? certificate, X509Chain? chain, SslPolicyErrors errors)
    {
        LastRefusal = Refusal(certificate as X509Certificate2 ?? (certificate is null ? null : new X509Certificate2(certificate)), chain, errors);
        return LastRefusal is null;
    }

    private string? Refusal(X509Certificate2? certificate, X509Chain? chain, SslPolicyErrors errors)
    {
        if (certificate is null) return "it presented no certificate";
        // The name is checked either way: a certificate of the same CA for another host is not this API's.
        if (errors.HasFlag(SslPolicyErrors.RemoteCertificateNameMismatch))
            return $"its certificate {certificate.Subject} does not name the host lsm dialled (issue it with --address HOST for each name the API is reached by)";
        if (_authorities is null)
            return errors == SslPolicyErrors.None ? null
                : $"its certificate {certificate.Subject} (issued by {certificate.Issuer}) is not trusted by this machine ({errors})";
        return CertificateChain.Refusal(certificate, _authorities, chain, $"the CA in {_caFile}");
    }

    /// <summary>The handler that checks the API's certificate this way.</summary>
    public SocketsHttpHandler Handler() => new()
    {
        SslOptions = { RemoteCertificateValidationCallback = (_, certificate, chain, errors) => Accept(certificate, chain, errors) },
    };
}
