using System.Net.Security;
using System.Security.Cryptography.X509Certificates;
using Akka.Event;

namespace LiveMigration.Shared.Hosting;

/// <summary>
/// One node's side of the cluster's mutual TLS: the certificate it presents and the cluster's certificate authorities,
/// the only ones whose certificates it accepts from a peer (never the machine's system store: a certificate any public
/// CA signed must not make its holder a member that can command the SPM).
/// </summary>
public sealed class ClusterTls
{
    public X509Certificate2 Certificate { get; }

    /// <summary>The trusted roots: one CA, or several while the cluster rotates from an old CA to a new one.</summary>
    public X509Certificate2Collection Authorities { get; }

    public ClusterTls(X509Certificate2 certificate, X509Certificate2Collection authorities)
    {
        if (authorities.Count == 0)
            throw new ArgumentException("the cluster CA bundle holds no certificate");
        if (!certificate.HasPrivateKey)
            throw new ArgumentException($"the node certificate {certificate.Subject} comes without its private key");
        Certificate = certificate;
        Authorities = authorities;
        // A node whose own certificate its peers will refuse fails here, with the reason, rather than as a silent outcast.
        if (RefusalReason(certificate) is { } reason)
            throw new ArgumentException($"the node certificate {certificate.Subject} is not accepted by the cluster CA bundle: {reason}");
    }

    /// <summary>
    /// Reads the node's certificate (PEM) and its private key (PEM; in the same file unless <paramref name="keyFile"/> names
    /// another) and the CA bundle (PEM, one or more CA certificates). A file holding a private key must be its owner's
    /// only (0600), like the API token file.
    /// </summary>
    public static ClusterTls Load(string certificateFile, string? keyFile, string caFile)
    {
        if (!File.Exists(caFile)) throw new ArgumentException($"the TLS file {caFile} does not exist");
        var certificate = CertificateChain.ReadWithKey(certificateFile, keyFile, "the node certificate");
        var authorities = CertificateChain.ReadAuthorities(caFile, "the cluster CA bundle");
        return new ClusterTls(certificate, authorities);
    }

    /// <summary>
    /// Why a peer's certificate is refused, or null when it is accepted: it must chain to one of <see cref="Authorities"/>
    /// (and nothing else), be valid now, and be a node's certificate rather than a CA's.
    /// </summary>
    public string? RefusalReason(X509Certificate2? peer, X509Chain? presentedChain = null)
    {
        if (peer is null) return "it presented no certificate";
        if (peer.Extensions.OfType<X509BasicConstraintsExtension>().FirstOrDefault() is { CertificateAuthority: true })
            return $"{peer.Subject} is a CA certificate, not a node's";
        return CertificateChain.Refusal(peer, Authorities, presentedChain, "the cluster CA");
    }

    /// <summary>
    /// The check Akka's TLS handshake runs on every peer, both when this node connects and when a peer connects to it.
    /// The system store's verdict (<paramref name="errors"/>) is ignored on purpose: the cluster CA is in no system store,
    /// and a name mismatch means nothing for nodes known by IP address; <see cref="RefusalReason"/> decides alone.
    /// </summary>
    public bool AcceptPeer(X509Certificate2? certificate, X509Chain? chain, string remotePeer, SslPolicyErrors errors, ILoggingAdapter log)
    {
        if (RefusalReason(certificate, chain) is not { } reason) return true;
        log.Warning("Cluster TLS: refused the connection with {Peer}: {Reason}", remotePeer, reason);
        return false;
    }
}

/// <summary>Whether a certificate chains to a private set of CAs, and nothing else (never the machine's system store).</summary>
public static class CertificateChain
{
    /// <summary>Why <paramref name="peer"/> does not chain to one of <paramref name="authorities"/> now, or null when it does.</summary>
    /// <param name="presentedChain">The intermediates the peer sent along, if any.</param>
    /// <param name="authorityName">How the message names the CAs, e.g. "the cluster CA".</param>
    public static string? Refusal(X509Certificate2 peer, X509Certificate2Collection authorities, X509Chain? presentedChain, string authorityName)
    {
        using var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.AddRange(authorities);
        // A private CA publishes no revocation list; rotation (deploy/README.md) is how a certificate is withdrawn.
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        chain.ChainPolicy.VerificationTime = DateTime.Now;
        if (presentedChain is not null)
            foreach (var element in presentedChain.ChainElements.Skip(1))
                chain.ChainPolicy.ExtraStore.Add(element.Certificate);
        if (chain.Build(peer)) return null;
        var problems = chain.ChainStatus.Select(s => s.StatusInformation.Trim()).Where(s => s.Length > 0).Distinct();
        return $"{peer.Subject} (issued by {peer.Issuer}) does not chain to {authorityName}: {string.Join("; ", problems)}";
    }

    /// <summary>
    /// A certificate (PEM) with its private key (PEM; in the same file unless <paramref name="keyFile"/> names another),
    /// refused with the reason when a file is missing, the key is readable by others than its owner (0600, like the API
    /// token file), or either cannot be read. <paramref name="what"/> names it in the messages, e.g. "the node certificate".
    /// </summary>
    public static X509Certificate2 ReadWithKey(string certificateFile, string? keyFile, string what)
    {
        var keyPath = keyFile ?? certificateFile;
        foreach (var file in new[] { certificateFile, keyPath }.Distinct())
            if (!File.Exists(file)) throw new ArgumentException($"the TLS file {file} does not exist");
        if (!OperatingSystem.IsWindows() && (File.GetUnixFileMode(keyPath) & OwnerOnly.OthersOrGroup) != 0)
            throw new ArgumentException($"the TLS private key {keyPath} is readable by other users: make it its owner's only (chmod 600 {keyPath})");
        try
        {
            return X509Certificate2.CreateFromPemFile(certificateFile, keyFile);
        }
        catch (Exception e) when (e is System.Security.Cryptography.CryptographicException or ArgumentException)
        {
            throw new ArgumentException($"cannot read {what} and its private key from {string.Join(" and ", new[] { certificateFile, keyPath }.Distinct())} " +
                                        $"(PEM, the key unencrypted): {e.Message}");
        }
    }

    /// <summary>The CA certificates of a PEM bundle; an <see cref="ArgumentException"/> naming the file when it holds none or a non-CA.</summary>
    public static X509Certificate2Collection ReadAuthorities(string caFile, string what)
    {
        if (!File.Exists(caFile)) throw new ArgumentException($"{what} {caFile} does not exist");
        var authorities = new X509Certificate2Collection();
        try
        {
            authorities.ImportFromPemFile(caFile);
        }
        catch (System.Security.Cryptography.CryptographicException e)
        {
            throw new ArgumentException($"cannot read {what} {caFile} (PEM certificates): {e.Message}");
        }
        if (authorities.Count == 0) throw new ArgumentException($"{what} {caFile} holds no certificate (PEM)");
        foreach (var authority in authorities)
            if (authority.Extensions.OfType<X509BasicConstraintsExtension>().FirstOrDefault() is not { CertificateAuthority: true })
                throw new ArgumentException($"{caFile} holds {authority.Subject}, which is not a CA certificate (basic constraints CA:TRUE)");
        return authorities;
    }
}

/// <summary>The permission bits that make a secret file someone else's too.</summary>
public static class OwnerOnly
{
    public const UnixFileMode OthersOrGroup = UnixFileMode.GroupRead | UnixFileMode.GroupWrite | UnixFileMode.GroupExecute
                                              | UnixFileMode.OtherRead | UnixFileMode.OtherWrite | UnixFileMode.OtherExecute;
}
