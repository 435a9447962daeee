using System.Buffers.Binary;
using System.Net.Sockets;
using System.Text;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Guest;

/// <summary>
/// A small NBD client that speaks the fixed-newstyle handshake (NBD_OPT_GO) and simple replies:
/// READ, WRITE, FLUSH, DISCONNECT over a unix socket. It is the guest's view of a drive that QEMU
/// exports with <c>block-export-add</c>, so what it writes goes through QEMU as a guest's write would.
/// One request is in flight at a time; every request has a timeout so a dead server is an error, not a hang.
/// </summary>
public sealed class NbdClient : IAsyncDisposable
{
    public static readonly TimeSpan DefaultRequestTimeout = TimeSpan.FromSeconds(30);

    private const ulong InitPasswd = 0x4e42444d41474943;      // "NBDMAGIC"
    private const ulong OptionMagic = 0x49484156454f5054;     // "IHAVEOPT"
    private const ulong OptionReplyMagic = 0x0003e889045565a9;
    private const uint RequestMagic = 0x25609513;
    private const uint SimpleReplyMagic = 0x67446698;
    private const uint StructuredReplyMagic = 0x668e33ef;

    private const ushort HandshakeFixedNewstyle = 1 << 0;
    private const ushort HandshakeNoZeroes = 1 << 1;
    private const uint ClientFixedNewstyle = 1 << 0;
    private const uint ClientNoZeroes = 1 << 1;

    private const uint OptAbort = 2;
    private const uint OptGo = 7;
    private const uint RepAck = 1;
    private const uint RepInfo = 3;
    private const uint RepErrorBit = 1u << 31;
    private const ushort InfoExport = 0;

    private const ushort CmdRead = 0;
    private const ushort CmdWrite = 1;
    private const ushort CmdDisconnect = 2;
    private const ushort CmdFlush = 3;
    private const ushort CmdFlagFua = 1 << 0;

    private const ushort TransmissionReadOnly = 1 << 1;
    private const ushort TransmissionSendFlush = 1 << 2;
    private const ushort TransmissionSendFua = 1 << 3;

    /// <summary>Longest option reply payload we accept; the protocol caps strings at 4096 bytes.</summary>
    private const uint MaxOptionReplyLength = 64 * 1024;

    private readonly Socket _socket;
    private readonly NetworkStream _stream;
    private readonly SemaphoreSlim _oneRequest = new(1, 1);
    private readonly byte[] _header = new byte[28];
    private ulong _nextCookie = 1;
    private string? _brokenReason;
    private bool _disposed;
    private bool _inTransmission;

    private NbdClient(Socket socket, string socketPath, string exportName, TimeSpan requestTimeout)
    {
        _socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: true);
        SocketPath = socketPath;
        ExportName = exportName;
        RequestTimeout = requestTimeout;
    }

    public string SocketPath { get; }
    public string ExportName { get; }
    public TimeSpan RequestTimeout { get; }
    /// <summary>The export's size in bytes, as the server announced it.</summary>
    public long ExportSize { get; private set; }
    /// <summary>The export's transmission flags (NBD_FLAG_*).</summary>
    public ushort TransmissionFlags { get; private set; }
    public bool IsReadOnly => (TransmissionFlags & TransmissionReadOnly) != 0;
    public bool SupportsFlush => (TransmissionFlags & TransmissionSendFlush) != 0;
    public bool SupportsFua => (TransmissionFlags & TransmissionSendFua) != 0;
    /// <summary>False once a request failed in a way that leaves the stream in an unknown state.</summary>
    public bool IsConnected => _brokenReason is null && !_disposed;

    /// <summary>Connects to <paramref name="socketPath"/>, negotiates <paramref name="exportName"/> and enters transmission.</summary>
    public static async Task<NbdClient> ConnectAsync(string socketPath, string exportName,
        TimeSpan? requestTimeout = null, CancellationToken ct = default)
    {
        var timeout = requestTimeout ?? DefaultRequestTimeout;
        if (timeout <= TimeSpan.Zero)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"NBD request timeout must be positive, got {timeout}");
        if (Encoding.UTF8.GetByteCount(exportName) > 4096)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, "NBD export name is longer than 4096 bytes");

        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(ct);
        deadline.CancelAfter(timeout);
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        NbdClient? client = null;
        try
        {
            await socket.ConnectAsync(new UnixDomainSocketEndPoint(socketPath), deadline.Token);
            client = new NbdClient(socket, socketPath, exportName, timeout);
            await client.HandshakeAsync(deadline.Token);
            return client;
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            await CloseAsync();
            throw new OperationFailedException(ErrorCodes.IoError,
                $"NBD handshake with {socketPath} (export '{exportName}') did not finish within {timeout.TotalSeconds:0.#} s");
        }
        catch (Exception e) when (e is SocketException or IOException or EndOfStreamException)
        {
            await CloseAsync();
            throw new OperationFailedException(ErrorCodes.IoError,
                $"NBD connection to {socketPath} (export '{exportName}') failed: {e.Message}", e);
        }
        catch
        {
            await CloseAsync();
            throw;
        }

        async Task CloseAsync()
        {
            if (client is not null)
                await client.DisposeAsync();
            else
                socket.Dispose();
        }
    }

    private async Task HandshakeAsync(CancellationToken ct)
    {
        var greeting = new byte[18];
        await _stream.ReadExactlyAsync(greeting, ct);
        var passwd = BinaryPrimitives.ReadUInt64BigEndian(greeting);
        var optMagic = BinaryPrimitives.ReadUInt64BigEndian(greeting.AsSpan(8));
        var handshakeFlags = BinaryPrimitives.ReadUInt16BigEndian(greeting.AsSpan(16));
        if (passwd != InitPasswd)
            throw Protocol($"the server's greeting does not start with NBDMAGIC (got 0x{passwd:x16})");
        if (optMagic != OptionMagic)
            throw Protocol($"the server does not speak newstyle negotiation (magic 0x{optMagic:x16}, oldstyle is not supported)");
        if ((handshakeFlags & HandshakeFixedNewstyle) == 0)
            throw Protocol("the server does not support fixed-newstyle negotiation");
        var noZeroes = (handshakeFlags & HandshakeNoZeroes) != 0;

        var clientFlags = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(clientFlags, ClientFixedNewstyle | (noZeroes ? ClientNoZeroes : 0));
        await _stream.WriteAsync(clientFlags, ct);

        // NBD_OPT_GO: name length, name, and zero information requests (NBD_INFO_EXPORT is always sent).
        var name = Encoding.UTF8.GetBytes(ExportName);
        var goData = new byte[4 + name.Length + 2];
        BinaryPrimitives.WriteUInt32BigEndian(goData, (uint)name.Length);
        name.CopyTo(goData, 4);
        await SendOptionAsync(OptGo, goData, ct);

        var sawExportInfo = false;
        while (true)
        {
            var (type, data) = await ReadOptionReplyAsync(OptGo, ct);
            if (type == RepAck)
                break;
            if (type == RepInfo)
            {
                if (data.Length >= 2 && BinaryPrimitives.ReadUInt16BigEndian(data) == InfoExport)
                {
                    if (data.Length < 12)
                        throw Protocol($"NBD_INFO_EXPORT carries {data.Length} bytes, expected 12");
                    ExportSize = checked((long)BinaryPrimitives.ReadUInt64BigEndian(data.AsSpan(2)));
                    TransmissionFlags = BinaryPrimitives.ReadUInt16BigEndian(data.AsSpan(10));
                    sawExportInfo = true;
                }
                continue; // other information (name, description, block sizes) is not needed
            }
            if ((type & RepErrorBit) != 0)
            {
                var serverMessage = Encoding.UTF8.GetString(data);
                await TryAbortNegotiationAsync();
                throw new OperationFailedException(ErrorCodes.IoError,
                    $"NBD server at {SocketPath} refused export '{ExportName}': {RepErrorName(type)}" +
                    (serverMessage.Length > 0 ? $" ({serverMessage})" : ""));
            }
            throw Protocol($"unexpected reply type 0x{type:x8} to NBD_OPT_GO");
        }
        if (!sawExportInfo)
            throw Protocol("the server acknowledged NBD_OPT_GO without sending NBD_INFO_EXPORT");
        _inTransmission = true;
    }

    private async Task SendOptionAsync(uint option, byte[] data, CancellationToken ct)
    {
        var header = new byte[16];
        BinaryPrimitives.WriteUInt64BigEndian(header, OptionMagic);
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(8), option);
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(12), (uint)data.Length);
        await _stream.WriteAsync(header, ct);
        if (data.Length > 0)
            await _stream.WriteAsync(data, ct);
    }

    private async Task<(uint Type, byte[] Data)> ReadOptionReplyAsync(uint option, CancellationToken ct)
    {
        var header = new byte[20];
        await _stream.ReadExactlyAsync(header, ct);
        var magic = BinaryPrimitives.ReadUInt64BigEndian(header);
        var repliedOption = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(8));
        var type = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(12));
        var length = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(16));
        if (magic != OptionReplyMagic)
            throw Protocol($"bad option reply magic 0x{magic:x16}");
        if (repliedOption != option)
            throw Protocol($"option reply names option {repliedOption}, expected {option}");
        if (length > MaxOptionReplyLength)
            throw Protocol($"option reply of {length} bytes is larger than {MaxOptionReplyLength}");
        var data = new byte[length];
        await _stream.ReadExactlyAsync(data, ct);
        return (type, data);
    }

    /// <summary>Ends the negotiation politely after a refusal; the connection is closed right after anyway.</summary>
    private async Task TryAbortNegotiationAsync()
    {
        try
        {
            using var shortDeadline = new CancellationTokenSource(TimeSpan.FromSeconds(1));
            await SendOptionAsync(OptAbort, [], shortDeadline.Token);
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException)
        {
            // the server may already have closed; the refusal is what the caller needs to see
        }
    }

    private static string RepErrorName(uint type) => (type & ~RepErrorBit) switch
    {
        1 => "NBD_REP_ERR_UNSUP",
        2 => "NBD_REP_ERR_POLICY",
        3 => "NBD_REP_ERR_INVALID",
        4 => "NBD_REP_ERR_PLATFORM",
        5 => "NBD_REP_ERR_TLS_REQD",
        6 => "NBD_REP_ERR_UNKNOWN (no such export)",
        7 => "NBD_REP_ERR_SHUTDOWN",
        8 => "NBD_REP_ERR_BLOCK_SIZE_REQD",
        9 => "NBD_REP_ERR_TOO_BIG",
        var other => $"NBD_REP_ERR code {other}",
    };

    /// <summary>Reads <paramref name="buffer"/>.Length bytes at <paramref name="offset"/>.</summary>
    public async Task ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct = default)
    {
        CheckRange(offset, buffer.Length, "read");
        await RequestAsync(CmdRead, 0, offset, buffer.Length, ReadOnlyMemory<byte>.Empty, buffer, ct);
    }

    /// <summary>Writes <paramref name="data"/> at <paramref name="offset"/>; returns once the server acknowledged it.</summary>
    /// <param name="fua">Force unit access: the server acknowledges only once the data is on stable storage.</param>
    public async Task WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua = false, CancellationToken ct = default)
    {
        CheckRange(offset, data.Length, "write");
        if (IsReadOnly)
            throw new OperationFailedException(ErrorCodes.IoError, $"NBD export '{ExportName}' at {SocketPath} is read-only");
        if (fua && !SupportsFua)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"NBD export '{ExportName}' does not support FUA");
        await RequestAsync(CmdWrite, fua ? CmdFlagFua : (ushort)0, offset, data.Length, data, Memory<byte>.Empty, ct);
    }

    /// <summary>Asks the server to make every acknowledged write durable.</summary>
    public async Task FlushAsync(CancellationToken ct = default)
    {
        if (!SupportsFlush)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"NBD export '{ExportName}' does not support FLUSH");
        await RequestAsync(CmdFlush, 0, 0, 0, ReadOnlyMemory<byte>.Empty, Memory<byte>.Empty, ct);
    }

    private void CheckRange(long offset, int length, string what)
    {
        if (offset < 0 || length < 0 || offset + length > ExportSize)
            throw new OperationFailedException(ErrorCodes.InvalidArgument,
                $"NBD {what} of {length} bytes at offset {offset} is outside export '{ExportName}' of {ExportSize} bytes");
    }

    private async Task RequestAsync(ushort command, ushort flags, long offset, int length,
        ReadOnlyMemory<byte> payload, Memory<byte> replyData, CancellationToken ct)
    {
        await _oneRequest.WaitAsync(ct);
        try
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_brokenReason is not null)
                throw new OperationFailedException(ErrorCodes.IoError,
                    $"NBD connection to {SocketPath} is unusable after an earlier failure: {_brokenReason}");

            var cookie = _nextCookie++;
            using var deadline = CancellationTokenSource.CreateLinkedTokenSource(ct);
            deadline.CancelAfter(RequestTimeout);
            var what = $"NBD {CommandName(command)} of {length} bytes at offset {offset} on {SocketPath}";
            try
            {
                FillRequestHeader(command, flags, cookie, offset, length);
                await _stream.WriteAsync(_header, deadline.Token);
                if (payload.Length > 0)
                    await _stream.WriteAsync(payload, deadline.Token);

                var reply = _header.AsMemory(0, 16);
                await _stream.ReadExactlyAsync(reply, deadline.Token);
                var magic = BinaryPrimitives.ReadUInt32BigEndian(reply.Span);
                var error = BinaryPrimitives.ReadUInt32BigEndian(reply.Span[4..]);
                var repliedCookie = BinaryPrimitives.ReadUInt64BigEndian(reply.Span[8..]);
                if (magic == StructuredReplyMagic)
                    throw Broken(what, "the server sent a structured reply that was never negotiated");
                if (magic != SimpleReplyMagic)
                    throw Broken(what, $"bad reply magic 0x{magic:x8}");
                if (repliedCookie != cookie)
                    throw Broken(what, $"reply cookie {repliedCookie} does not match request cookie {cookie}");
                if (error != 0)
                {
                    // A simple reply to a failed read carries no data, so the stream stays in step.
                    throw new OperationFailedException(ErrorCodes.IoError, $"{what} failed on the server: {ErrnoName(error)}");
                }
                if (replyData.Length > 0)
                    await _stream.ReadExactlyAsync(replyData, deadline.Token);
            }
            catch (OperationCanceledException) when (!ct.IsCancellationRequested)
            {
                throw Broken(what, $"no reply within {RequestTimeout.TotalSeconds:0.#} s");
            }
            catch (OperationCanceledException)
            {
                // Cancelled half-way: the reply may still arrive, so the stream is out of step.
                _brokenReason = $"{what} was cancelled before its reply";
                throw;
            }
            catch (Exception e) when (e is IOException or SocketException or EndOfStreamException or ObjectDisposedException)
            {
                throw Broken(what, $"the connection failed: {e.Message}", e);
            }
        }
        finally
        {
            _oneRequest.Release();
        }
    }

    private void FillRequestHeader(ushort command, ushort flags, ulong cookie, long offset, int length)
    {
        var span = _header.AsSpan();
        BinaryPrimitives.WriteUInt32BigEndian(span, RequestMagic);
        BinaryPrimitives.WriteUInt16BigEndian(span[4..], flags);
        BinaryPrimitives.WriteUInt16BigEndian(span[6..], command);
        BinaryPrimitives.WriteUInt64BigEndian(span[8..], cookie);
        BinaryPrimitives.WriteUInt64BigEndian(span[16..], (ulong)offset);
        BinaryPrimitives.WriteUInt32BigEndian(span[24..], (uint)length);
    }

    private OperationFailedException Broken(string what, string reason, Exception? inner = null)
    {
        _brokenReason = $"{what}: {reason}";
        return new OperationFailedException(ErrorCodes.IoError, $"{what} failed: {reason}", inner);
    }

    private OperationFailedException Protocol(string reason) =>
        new(ErrorCodes.IoError, $"NBD protocol error from {SocketPath} (export '{ExportName}'): {reason}");

    private static string CommandName(ushort command) => command switch
    {
        CmdRead => "READ",
        CmdWrite => "WRITE",
        CmdFlush => "FLUSH",
        CmdDisconnect => "DISCONNECT",
        _ => $"command {command}",
    };

    private static string ErrnoName(uint error) => error switch
    {
        1 => "EPERM",
        5 => "EIO",
        12 => "ENOMEM",
        22 => "EINVAL",
        28 => "ENOSPC",
        75 => "EOVERFLOW",
        95 => "ENOTSUP",
        108 => "ESHUTDOWN",
        _ => $"error {error}",
    };

    /// <summary>Sends NBD_CMD_DISCONNECT (no reply is expected) and closes the socket.</summary>
    public async ValueTask DisposeAsync()
    {
        if (_disposed)
            return;
        await _oneRequest.WaitAsync();
        try
        {
            if (_disposed)
                return;
            if (_brokenReason is null && _inTransmission)
            {
                try
                {
                    using var shortDeadline = new CancellationTokenSource(TimeSpan.FromSeconds(1));
                    FillRequestHeader(CmdDisconnect, 0, _nextCookie++, 0, 0);
                    await _stream.WriteAsync(_header, shortDeadline.Token);
                }
                catch (Exception e) when (e is IOException or SocketException or OperationCanceledException)
                {
                    // the server is gone already; closing is all that is left
                }
            }
            _disposed = true;
            await _stream.DisposeAsync();
        }
        finally
        {
            _oneRequest.Release();
        }
    }
}
